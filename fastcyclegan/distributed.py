"""A job of several processes started by torchrun: its process group, its agreement to start, its summary.

torchrun (`python -m torch.distributed.run`) sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
for every process it starts; `Job.from_env()` reads them (None without torchrun: nothing changes then).
Only small Python objects cross between processes (whether each could start, each one's summary): the
process group is gloo on the CPU and "cpu:gloo,cuda:nccl" with CUDA, so those objects travel over gloo
and every collective has the group's timeout: no process waits forever for one that died.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .devices import default_device


class JobFailed(RuntimeError):
    """Another process of the job (or this one) could not start or finish; the message says which and why."""


# how long the end of a job waits for a process that is still working: a slow process is no failed one (a
# process that dies ends the job at once: its connections close, and torchrun stops the others)
FINISH_TIMEOUT = datetime.timedelta(days=30)


@dataclass
class Job:
    rank: int
    local_rank: int
    world_size: int
    _finish_group: object = None  # the gloo group whose collectives wait FINISH_TIMEOUT

    @classmethod
    def from_env(cls) -> Job | None:
        """The job torchrun started this process in, or None when it was not started by torchrun."""
        if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
            return None
        try:
            job = cls(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), int(os.environ["WORLD_SIZE"]))
        except ValueError:
            raise JobFailed(
                f"torchrun environment is malformed: RANK={os.environ.get('RANK')!r}, "
                f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}; expected integers"
            ) from None
        if not 0 <= job.rank < job.world_size:
            raise JobFailed(f"RANK {job.rank} is outside WORLD_SIZE {job.world_size}")
        # a job of one process is a plain run (a WORLD_SIZE=1 RANK=0 left in a shell needs no process group)
        return job if job.world_size > 1 else None

    def device(self, name: str) -> str:
        """The device this process runs on: `auto` and `cuda` become cuda:LOCAL_RANK (one GPU per process)
        when CUDA is there; an explicit cuda:N or cpu is kept."""
        if name == "cuda" or (name == "auto" and default_device().type == "cuda"):
            return f"cuda:{self.local_rank}"
        return name

    def start(self, timeout_s: float) -> None:
        """Joins the process group (the rendezvous torchrun set up): the start (`agree`) gives up after
        timeout_s seconds, the end (`finish`) waits for slow processes as long as they live."""
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        self._finish_group = dist.new_group(backend="gloo", timeout=FINISH_TIMEOUT)

    def agree(self, problem: str | None) -> None:
        """Every process says whether it can go on (problem None) or why not; raises JobFailed on every
        process, naming each failed rank and its reason, if any cannot."""
        problems = self.gather(problem)
        failed = [f"rank {rank}: {why}" for rank, why in enumerate(problems) if why is not None]
        if failed:
            raise JobFailed("; ".join(failed))

    def finish(self, value) -> list:
        """`gather` at the end of the job's work: waits for the processes still working however long they
        take (their shares differ), not the start's timeout."""
        return self.gather(value, group=self._finish_group)

    def gather(self, value, group=None) -> list:
        """value from every process, in rank order, on every process."""
        values = [None] * self.world_size
        try:
            dist.all_gather_object(values, value, group=group)
        except RuntimeError as err:  # a timeout or a process that died: the group is gone
            raise JobFailed(f"lost contact with the other processes ({str(err).splitlines()[0]})") from None
        return values

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
