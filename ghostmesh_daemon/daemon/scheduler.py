"""Timed work, as APScheduler 3.x jobs that only send commands to the controller.

Jobs: a periodic full rescan, the edges of the quiet hours (pause at the start, resume at the end),
a power check when ``only_on_ac_power`` is set, and ledger maintenance. Every job coalesces missed
runs into one and never runs twice at once.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Callable

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from .controller import Controller, Maintain
from .power import on_battery

log = logging.getLogger("ghostmesh.daemon")

QUIET = "quiet hours"
BATTERY = "on battery"


def in_window(now: dt.time, start: dt.time, end: dt.time) -> bool:
    """Whether ``now`` is inside ``[start, end)``; the window may cross midnight."""
    if start < end:
        return start <= now < end
    return now >= start or now < end


class Scheduler:
    def __init__(
        self,
        controller: Controller,
        *,
        rescan_minutes: float,
        quiet_hours: tuple[dt.time, dt.time] | None = None,
        only_on_ac_power: bool = False,
        maintenance_hours: float = 24.0,
        power_check_seconds: float = 60.0,
        battery: Callable[[], bool | None] = on_battery,
    ) -> None:
        self.controller = controller
        self.quiet_hours = quiet_hours
        self._battery = battery
        self._battery_unknown_said = False
        self._sched = BackgroundScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 300}
        )
        self._sched.add_job(controller.rescan, "interval", minutes=rescan_minutes, id="rescan")
        self._sched.add_job(self._maintain, "interval", hours=maintenance_hours, id="maintenance")
        if quiet_hours is not None:
            start, end = quiet_hours
            self._sched.add_job(controller.pause, CronTrigger(hour=start.hour, minute=start.minute),
                                args=[QUIET], id="quiet-start")
            self._sched.add_job(controller.resume, CronTrigger(hour=end.hour, minute=end.minute),
                                args=[QUIET], id="quiet-end")
        if only_on_ac_power:
            self._sched.add_job(self.check_power, "interval", seconds=power_check_seconds, id="power")

    def start(self) -> None:
        """Start the jobs, and apply the rules that hold right now (quiet hours, battery)."""
        if self.quiet_hours is not None and in_window(dt.datetime.now().time(), *self.quiet_hours):
            self.controller.pause(QUIET)
        if self._sched.get_job("power") is not None:
            self.check_power()
        self._sched.start()

    def stop(self) -> None:
        if self._sched.running:
            self._sched.shutdown(wait=False)

    def job_ids(self) -> list[str]:
        return sorted(job.id for job in self._sched.get_jobs())

    def check_power(self) -> None:
        state = self._battery()
        if state is None:
            if not self._battery_unknown_said:
                log.warning("cannot tell whether this computer is on battery; only_on_ac_power has no effect")
                self._battery_unknown_said = True
            return
        (self.controller.pause if state else self.controller.resume)(BATTERY)

    def _maintain(self) -> None:
        self.controller.send(Maintain())
