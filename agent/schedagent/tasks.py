"""Small asyncio helpers for owning tasks without swallowing our own cancellation."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


async def cancel_and_wait(*tasks: asyncio.Task[object] | asyncio.Future[object]) -> None:
    """Cancel tasks and wait until they are done.

    Unlike `suppress(CancelledError): await task`, a cancellation of the *calling*
    task that arrives meanwhile still propagates: swallowing it would leave the
    caller running on with a pending cancel it never honours.
    """
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.error("task failed while being cancelled", exc_info=task.exception())
