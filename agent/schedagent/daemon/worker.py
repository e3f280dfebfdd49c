"""The worker: takes this node's dispatches, runs each job, and records how it ended."""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import nats.errors
import nats.js.errors

from schedagent.config import AgentConfig
from schedagent.core import transitions, wire
from schedagent.core.model import Job, JobState, Outcome
from schedagent.daemon.attemptends import AGENT_STOPPED, HAND_BACKS, AttemptEnds
from schedagent.daemon.gate import Gate, audit
from schedagent.daemon.handover import HandedAttempt
from schedagent.daemon.metrics import AgentMetrics
from schedagent.daemon.orphans import reap_previous_incarnation, remove_leftover_cgroups
from schedagent.daemon.running import OutputTail, RunningJob
from schedagent.daemon.starter import Busy, Refusal, Started, Starter
from schedagent.errors import (
    ConflictError,
    HandedOver,
    NotFoundError,
    StoreUnavailableError,
    WireError,
)
from schedagent.etcd.batcher import TxnBatcher
from schedagent.etcd.jobstore import JobStore
from schedagent.etcd.session import Session
from schedagent.etcd.updates import BatchedUpdates
from schedagent.host import journal
from schedagent.host.containment import Containment, JobGroup, Limits
from schedagent.host.jobunit import JobUnit, Resume
from schedagent.host.runner import Command, job_environment, run_command
from schedagent.nats.bus import Bus
from schedagent.nats.dispatches import DispatchConsumer

log = logging.getLogger(__name__)

NATS_ERRORS = (nats.errors.Error, nats.js.errors.Error, OSError)
PID_RECORD_DELAY = 1.0
LEASE_LOST = "agent lost its etcd lease"
# A planned restart waits this long for its runners to let go of their units (each
# only reads its files to their end): then the drain takes what is left.
HANDOVER_TIMEOUT = 5.0


class Worker:
    def __init__(
        self,
        config: AgentConfig,
        jobs: JobStore,
        bus: Bus,
        lease: Callable[[], int],
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.lease = lease
        self.metrics = metrics or AgentMetrics()
        self.gate = Gate(
            lambda: self.config.security,
            jobs.store,
            jobs.keys,
            lambda: (self.config.node_name, dict(self.config.labels)),
        )
        self.config = config
        self.node = config.node_name
        self.jobs = jobs
        self.bus = bus
        # Starts and ends that happen together share etcd transactions.
        self.batcher = TxnBatcher(jobs.store)
        self.starter = Starter(self.node, jobs, self.gate, self.batcher, lease)
        self.updates = BatchedUpdates(jobs, self.batcher)
        self.running: dict[str, RunningJob] = {}
        # Jobs whose RUNNING write is in flight: not running yet, but no orphan either.
        self.starting: set[str] = set()
        # Attempts started so far (RunningJob.seq): the reconciler judges only attempts
        # started before it read the records, whose RUNNING write that read must show.
        self.starts = 0
        # Attempts that ran here but whose end could not be recorded (a bug): the
        # reconciler closes them instead of handing them back as never started.
        self.unrecorded: set[tuple[str, int]] = set()
        self.accepting = True
        # An operator's drain of this node came due (daemon/drainwatch.py): start nothing.
        self.drained = False
        # The fence's say (daemon/fence.py): no job starts while the lease may be gone.
        self.may_start: Callable[[], bool] = lambda: True
        self.finished = 0
        self.handed_back = 0
        self.backoff = transitions.Backoff(config.jobs.retry_backoff, config.jobs.retry_backoff_max)
        self.ends = AttemptEnds(self.node, self.updates, self.backoff, self.metrics, bus)
        self.containment = Containment.setup(config.node_name, config.containment.cgroups)
        if os.geteuid() == 0 and config.security.job_user is None:
            log.warning("root, and no security.job_user: jobs that name no user run as root")
        self._tasks: set[asyncio.Task[None]] = set()
        self.handed: list[HandedAttempt] = []  # attempts left running for the next agent

    def usage(self) -> tuple[float, int]:
        return sum(r.cpus for r in self.running.values()), len(self.running)

    async def run(self) -> None:
        """Take dispatches until `accepting` is cleared; jobs already running are left to
        finish (the reconciler keeps hearing their cancels meanwhile)."""
        consumer = DispatchConsumer(self.bus, self.node)
        try:
            while self.accepting:
                messages = await consumer.fetch()
                await asyncio.gather(*(self._on_dispatch(msg) for msg in messages))
        finally:
            await consumer.close()

    async def reap_leftovers(self) -> None:
        """Kill what a previous incarnation left running. Call before registering: once
        the leader sees our new lease it closes those attempts, and they are harder to find."""
        try:
            await reap_previous_incarnation(self.jobs, self.node, self.lease(), self.containment)
            await remove_leftover_cgroups(self.jobs, self.node, self.containment)
        except StoreUnavailableError as exc:
            log.warning("could not look for a previous incarnation's jobs: %s", exc)

    async def _on_dispatch(self, msg: Any) -> None:
        try:
            await self._handle_dispatch(msg)
        except NATS_ERRORS as exc:
            # An ack or nak that did not reach NATS: the dispatch comes again after
            # ack_wait and is looked at afresh; the worker itself must go on.
            log.warning("handling a dispatch on %s: %s", msg.subject, exc)

    async def _handle_dispatch(self, msg: Any) -> None:
        try:
            dispatch = wire.parse_dispatch(msg.data)
        except WireError:
            log.warning("dropping malformed dispatch on %s: %r", msg.subject, msg.data[:200])
            await msg.term()
            return
        job_id, attempt = dispatch.job, dispatch.attempt
        if not self.accepting or self.drained or not self.may_start():
            await msg.nak(delay=1)
            return
        try:
            await self._start(msg, dispatch)
        except StoreUnavailableError as exc:
            log.warning(
                "cannot start job %s now (%s); will retry", job_id, exc, extra={"job_id": job_id}
            )
            await msg.nak(delay=1)
        except NATS_ERRORS:
            raise
        except Exception as exc:
            # A bug, or a record this version cannot handle: the job ends saying so
            # instead of coming back forever, and the worker goes on.
            log.exception("job %s: starting attempt %d failed", job_id, attempt)
            await self._refuse(msg, job_id, attempt, f"the worker could not start it: {exc!r}")

    async def _refuse(self, msg: Any, job_id: str, attempt: int, reason: str) -> None:
        """End an attempt this worker will not run: the job fails with the reason."""
        self.metrics.jobs_refused.inc()
        stored, changed = await self.ends.write_until_done(
            job_id, lambda j: transitions.refuse(j, self.node, attempt, reason, time.time())
        )
        await msg.ack()
        if stored is not None and changed:
            await self.bus.publish_event(stored)

    async def _start(self, msg: Any, dispatch: wire.Dispatch) -> None:
        job_id, attempt = dispatch.job, dispatch.attempt
        if job_id in self.running or job_id in self.starting:
            log.info("dropping a second dispatch of job %s attempt %d", job_id, attempt)
            await msg.ack()
            return
        taken = time.perf_counter()
        self.starting.add(job_id)
        try:
            outcome = await self.starter.start(dispatch)
        finally:
            self.starting.discard(job_id)
        if isinstance(outcome, Busy):
            await msg.nak(delay=0.2)  # it kept changing: look again
        elif isinstance(outcome, Refusal):
            audit("refused", job_id, _signer_of(outcome.job), outcome.reason, logging.WARNING)
            await self._refuse(msg, job_id, attempt, outcome.reason)
        elif isinstance(outcome, Started):
            audit("start", job_id, outcome.signer, f"attempt {attempt} on {self.node}")
            await self._launch(msg, outcome, taken)
        else:
            job = outcome.job
            log.info(
                "dropping stale dispatch of job %s attempt %d (now %s on %s, attempt %d)",
                job_id,
                attempt,
                job.state if job else "gone",
                job.node if job else None,
                job.attempt if job else 0,
                extra={"job_id": job_id, "attempt": attempt},
            )
            await msg.ack()

    async def _launch(self, msg: Any, outcome: Started, taken: float) -> None:
        # Recorded RUNNING: start it before anything else can fail. A lost ack only means
        # a redelivery, which finds the job RUNNING here and is dropped as stale.
        started = outcome.job
        self.starts += 1
        running = RunningJob(
            started.id,
            started.attempt,
            started.spec.cpus,
            record=started,
            revision=outcome.revision,
        )
        running.seq, running.taken_at = self.starts, taken
        self.metrics.jobs_started.inc()
        self.running[started.id] = running
        if running.lease != self.lease():
            # Written under a lease replaced while the start was on its way: etcd
            # declared that incarnation dead, so the leader retries it elsewhere.
            self.interrupt_all(LEASE_LOST, unless_lease=self.lease())
        task = asyncio.create_task(self._run(started, running), name=f"job-{started.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await msg.ack()
        await self.bus.publish_event(started)

    async def _run(self, job: Job, running: RunningJob) -> None:
        """Run the attempt and record its end, whatever fails on the way."""
        ids = {"job_id": job.id, "attempt": running.attempt}
        log.info(
            "job %s attempt %d started: %s", job.id, running.attempt, job.spec.cmd[:200], extra=ids
        )
        started_at = time.time()
        tail = OutputTail(self.config.output.tail_bytes)
        try:
            outcome = await self._execute(job, running, tail)
        except HandedOver as exc:
            log.info("job %s attempt %d: %s", job.id, running.attempt, exc, extra=ids)
            self._hand_over_done(running)
            return
        except Exception as exc:
            log.exception("job %s attempt %d: running it failed", job.id, ids["attempt"], extra=ids)
            if running.group is not None:
                running.group.kill()
            what = "cannot start" if running.pid is None else "the worker failed running it"
            outcome = Outcome(started_at, time.time(), error=f"{what}: {exc!r}")
        running.ended = True
        try:
            await self._record_end(job, running, outcome, tail)
        except Exception:
            log.exception("job %s attempt %d: recording its end failed", job.id, running.attempt)
            self.unrecorded.add((job.id, running.attempt))
        finally:
            self.running.pop(job.id, None)

    async def _execute(self, job: Job, running: RunningJob, tail: OutputTail) -> Outcome:
        subject = self.bus.subjects.output(job.id)
        decoders = {
            s: codecs.getincrementaldecoder("utf-8")("replace") for s in ("stdout", "stderr")
        }

        echo = journal.job_output(job.id, running.attempt, self.node, self.config.output.journal)

        async def on_output(stream: str, data: bytes) -> None:
            self.metrics.output_bytes.inc(len(data))
            tail.add(data)
            echo.feed(stream, data)
            text = decoders[stream].decode(data)
            await self.bus.publish(
                subject, wire.output_chunk(job.id, running.attempt, stream, text)
            )

        command = Command(
            cmd=job.spec.cmd,
            env=job_environment(
                job.spec.env, {"SCHED_JOB_ID": job.id, "SCHED_ATTEMPT": str(running.attempt)}
            ),
            cwd=job.spec.cwd,
            timeout=_time_left(job, running),
            kill_grace=self.config.jobs.kill_grace,
            chunk_bytes=self.config.output.chunk_bytes,
            tail_bytes=self.config.output.tail_bytes,
            user=job.spec.user or self.config.security.job_user,
            name=f"job-{job.id}-{running.attempt}",
            limits=self._limits(job),
        )

        def on_start(group: JobGroup) -> None:
            running.pid, running.group = group.pid, group
            if running.resume is not None and isinstance(group, JobUnit):
                for output in group.outputs:  # the tail the previous agent had
                    tail.add(output.handed_on(tail.limit))
            self.metrics.spawn_latency.observe(time.perf_counter() - running.taken_at)

        handover = (running.detach, running.resume)
        run = asyncio.create_task(
            run_command(command, on_output, running.cancel, on_start, self.containment, handover)
        )
        # Once the command has ended, its outcome is its own, whatever interrupt comes
        # while its end is being written (a lost lease, a stop, the fence).
        run.add_done_callback(lambda _: setattr(running, "ended", True))
        try:
            # Only a job that lives a while gets its PID recorded: for the many short ones
            # the extra etcd write would cost more than the job.
            done, _ = await asyncio.wait({run}, timeout=PID_RECORD_DELAY)
            if not done and running.pid is not None and running.resume is None:
                await self._record_pid(job.id, running)
            outcome = await run
        finally:
            if not run.done():  # something here failed: the command must not outlive it
                running.cancel.set()
                await asyncio.wait({run})
            echo.close()  # handed over too: its output goes on from the next agent
        await self.bus.publish(subject, wire.output_end(job.id, running.attempt))
        return outcome

    def _hand_over_done(self, running: RunningJob) -> None:
        """The attempt is left running: the next agent records its end, not this one."""
        self.running.pop(running.job_id, None)
        if isinstance(running.group, JobUnit):
            resume = running.group.resume_point()
            self.handed.append(
                HandedAttempt(
                    job_id=running.job_id,
                    attempt=running.attempt,
                    unit=running.group.service,
                    stdout_offset=resume.stdout_offset,
                    stderr_offset=resume.stderr_offset,
                )
            )

    async def hand_over(self) -> list[HandedAttempt]:
        """A planned restart: stop taking jobs, leave every attempt in a systemd unit
        running for the next agent, hand back the others (none, under systemd); what
        was left, and where each one's output goes on."""
        self.accepting = False
        for running in list(self.running.values()):
            if isinstance(running.group, JobUnit) and not running.ended:
                running.detach.set()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=HANDOVER_TIMEOUT)
        await self.drain(0)  # those that were not in a unit (or would not let go)
        return list(self.handed)

    async def reattach(self, handed: Sequence[HandedAttempt]) -> int:
        """Follow again the attempts the previous agent left running under this lease
        (resumed): each is this worker's now, its end recorded here. One whose record
        says otherwise is stopped. How many were taken."""
        taken = 0
        for attempt in handed:
            job = await self._handed_record(attempt)
            if job is None:
                await self.containment.stop_leftover(attempt.job_id, attempt.attempt)
                continue
            record, revision = job
            self.starts += 1
            running = RunningJob(
                record.id, record.attempt, record.spec.cpus, record=record, revision=revision
            )
            running.seq = self.starts
            running.resume = Resume(attempt.stdout_offset, attempt.stderr_offset)
            self.running[record.id] = running
            task = asyncio.create_task(self._run(record, running), name=f"job-{record.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            taken += 1
        return taken

    async def _handed_record(self, handed: HandedAttempt) -> tuple[Job, int] | None:
        """The attempt's record if it is still this node's RUNNING one, under this lease."""
        try:
            job, revision = await self.jobs.get(handed.job_id)
        except NotFoundError:
            job = None
        current = None if job is None else job.current_attempt()
        if (
            job is None
            or current is None
            or not transitions.owns(job, self.node, handed.attempt, JobState.RUNNING)
            or current.lease != self.lease()
        ):
            log.warning(
                "job %s attempt %d: handed over, but its record is no longer this node's "
                "running attempt: stopping it",
                handed.job_id,
                handed.attempt,
                extra={"job_id": handed.job_id, "attempt": handed.attempt},
            )
            return None
        return job, revision

    def _limits(self, job: Job) -> Limits:
        """The job's own limits, else this agent's defaults; its CPUs as a quota."""
        defaults = self.config.containment
        return Limits(
            memory=job.spec.memory if job.spec.memory is not None else defaults.memory,
            tasks=job.spec.tasks if job.spec.tasks is not None else defaults.tasks,
            cpus=job.spec.cpus,
        )

    async def _record_pid(self, job_id: str, running: RunningJob) -> None:
        """Best effort: the PID helps an operator find the job on the host."""
        pid = running.pid or 0
        running.revision = 0  # the record moves on; the end is written after a fresh read
        try:
            await self.jobs.update(
                job_id, lambda j: transitions.record_pid(j, self.node, running.attempt, pid)
            )
        except (StoreUnavailableError, ConflictError, NotFoundError) as exc:
            log.info(
                "job %s: pid %d not recorded: %s",
                job_id,
                pid,
                exc,
                extra={"job_id": job_id, "attempt": running.attempt},
            )

    async def _record_end(
        self, job: Job, running: RunningJob, outcome: Outcome, tail: OutputTail
    ) -> None:
        if await self.ends.record(job, running, outcome, tail):
            handed_back = running.interrupted in HAND_BACKS
            self.handed_back += handed_back
            self.finished += not handed_back

    def stop_attempt(self, job_id: str, attempt: int | None, why: str) -> bool:
        """Kill a running attempt (any, if attempt is None) for a cancel or because it is
        no longer ours; its end is recorded as usual, if it still can be. Whether it ran."""
        running = self.running.get(job_id)
        if running is None or running.ended or attempt not in (None, running.attempt):
            return False
        if not running.cancel.is_set():
            log.info(
                "job %s attempt %d: stopping it: %s",
                job_id,
                running.attempt,
                why,
                extra={"job_id": job_id, "attempt": running.attempt},
            )
            running.cancel.set()
        return True

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 - a bound, not a deadline
        """Stop taking jobs, give running ones `timeout` seconds, then hand the rest back."""
        self.accepting = False
        if self._tasks:
            log.info("draining: waiting up to %gs for %d running job(s)", timeout, len(self._tasks))
            await asyncio.wait(set(self._tasks), timeout=timeout)
        self.interrupt_all(AGENT_STOPPED)
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    def interrupt_all(self, reason: str, unless_lease: int | None = None) -> None:
        """Kill every running job (but those started under unless_lease); its attempt is
        recorded with this reason. One whose command has ended already (its end not yet
        written) keeps its own outcome."""
        for running in self.running.values():
            if unless_lease is not None and running.lease == unless_lease:
                continue
            if running.interrupted is None and not running.ended:
                log.warning(
                    "job %s attempt %d: killing it: %s",
                    running.job_id,
                    running.attempt,
                    reason,
                    extra={"job_id": running.job_id, "attempt": running.attempt},
                )
                running.interrupted = reason
            running.cancel.set()

    async def follow_lease(self, session: Session) -> None:
        """A replaced lease means etcd declared this agent dead: its attempts are being
        retried elsewhere, so stop them here rather than run them twice."""
        while True:
            await session.renewed.wait()
            # Not what already started under the new lease: this task may wake after
            # the fence let starts go on (a loop busy catching up after a freeze).
            self.interrupt_all(LEASE_LOST, unless_lease=session.lease_id)


def _time_left(job: Job, running: RunningJob) -> float | None:
    """The job's timeout; for an attempt taken over from the previous agent, what is
    left of it since the attempt started (at least 0: it times out at once)."""
    timeout = job.spec.timeout
    current = job.current_attempt()
    if timeout is None or running.resume is None or current is None:
        return timeout
    started = current.started_at or time.time()
    return max(0.0, timeout - (time.time() - started))


def _signer_of(job: Job) -> str | None:
    signature = job.spec.signature
    return None if signature is None else str(signature.get("key_id"))
