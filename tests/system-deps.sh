#!/usr/bin/env bash
# System packages the test suite uses for real parts (a virtual X display for the tray,
# systemd-analyze for the unit file, capsh for the hand-off's access check). Installed when missing and we are allowed to; the tests
# that need them skip with a reason otherwise.
set -u
need=()
command -v Xvfb >/dev/null 2>&1 || need+=(xvfb)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v capsh >/dev/null 2>&1 || need+=(libcap2-bin)  # the hand-off test drops file-access capabilities
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system test dependencies: ${need[*]}"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}") >/dev/null 2>&1 \
    || echo "warning: could not install ${need[*]}; tests that need them will skip" >&2
fi
exit 0
