"""Is the computer running on battery? Read from the OS, without extra dependencies where we can.

Linux: ``/sys/class/power_supply`` (a mains or USB supply that is online means AC). Elsewhere
``psutil`` when it is installed. ``None`` means "cannot tell": the caller treats that as AC power
(holding photos forever on a desktop without a battery would be worse) and says so once.
"""

from __future__ import annotations

from pathlib import Path

SYSFS = Path("/sys/class/power_supply")


def on_battery(sysfs: Path = SYSFS) -> bool | None:
    if sysfs.is_dir():
        supplies = list(sysfs.iterdir())
        ac = [s for s in supplies if _read(s / "type") in ("Mains", "USB", "USB_C", "USB_PD")]
        batteries = [s for s in supplies if _read(s / "type") == "Battery"]
        if ac:
            return not any(_read(s / "online") == "1" for s in ac)
        if batteries:
            return any(_read(s / "status") == "Discharging" for s in batteries)
        return False  # no battery at all: a desktop
    try:
        import psutil  # type: ignore[import-not-found]
    except ImportError:
        return None
    battery = psutil.sensors_battery()
    return None if battery is None else not battery.power_plugged


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
