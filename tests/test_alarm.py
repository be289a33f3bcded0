"""The event loop's precise alarm (``call.alarm``): on a kernel timer where Linux has one, the
loop's own timer elsewhere; both set their event only once its time has come, and only the last
alarm asked for."""

import asyncio
import sys
import time

import pytest

from call.alarm import Alarm


@pytest.mark.parametrize("kernel_timer", [True, False])
def test_an_alarm_sets_its_event_at_its_time_and_only_the_last_one_rings(kernel_timer):
    async def run():
        loop = asyncio.get_running_loop()
        alarm = Alarm(loop, time.monotonic if kernel_timer else loop.time)  # (another clock: the loop's timers)
        assert alarm.precise == kernel_timer
        first, second = asyncio.Event(), asyncio.Event()
        at = time.monotonic() + 0.03
        alarm.ring(at - 0.02, first)
        alarm.ring(at, second)  # replaces the first
        await asyncio.wait_for(second.wait(), 5.0)
        rang_at = time.monotonic()
        await asyncio.sleep(0.03)
        cancelled = asyncio.Event()
        alarm.ring(time.monotonic() + 0.01, cancelled)
        alarm.cancel()
        await asyncio.sleep(0.05)
        past = asyncio.Event()
        alarm.ring(time.monotonic() - 1.0, past)  # a time gone by: at once
        await asyncio.wait_for(past.wait(), 5.0)
        alarm.close()
        return rang_at >= at, first.is_set(), cancelled.is_set()
    on_time, first_rang, cancelled_rang = asyncio.run(run())
    assert on_time and not first_rang and not cancelled_rang


def test_the_kernel_timer_is_there_on_linux():
    """CI and users' Linux machines get the precise alarm: without it the playout reserves up to a
    millisecond more before every callback."""
    async def run():
        alarm = Alarm(asyncio.get_running_loop())
        precise = alarm.precise
        alarm.close()
        return precise
    assert asyncio.run(run()) == sys.platform.startswith("linux")
