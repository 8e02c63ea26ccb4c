"""What a session and a handle need of the other end, wherever it runs.

A local child (`_process.ChildProcess`), a child behind a launcher
(`_launch.LaunchedProcess`, of which `_ssh.SshProcess` is one) and a served daemon reached over the network
(`_client.NetPeer`) all offer this interface; `Session` and `DaemonProxy`
use nothing else, so they need no special case for any of them.

Values layer: uses `_child.channel` and `_output`, for annotations.
"""

from __future__ import annotations

from typing import Any, Protocol

from ._child.channel import Channel
from ._output import OutputLog


class Peer(Protocol):
    """The other end of a session: its channel, identity, output and lifetime."""

    channel: Channel
    pid: int
    hello: dict[str, Any]
    executable: str
    output: OutputLog
    # Whether a session may open lanes (see `_lanes`): the channel is a local socket
    # pair, over which a lane's socket can be passed.
    lanes: bool

    def poll(self) -> int | None:
        """The exit code once it has ended, else None."""

    def wait_exit(self, timeout: float) -> int | None:
        """Wait up to `timeout` for it to end; its exit code, or None if unknown or still running."""

    def stderr_text(self) -> str:
        """What to append to an error message about it (its last stderr lines), or ''."""

    def interrupt(self) -> None:
        """Interrupt the call it runs (Ctrl-C), where that is possible."""

    def said_stopping(self) -> bool:
        """Whether it said, before its channel closed, that it stops on purpose (a served daemon)."""

    def close_channel(self) -> None:
        """The first, non-blocking step of ending it."""

    def shutdown(self, timeout: float = ...) -> int | None:
        """End it within a bounded time; idempotent; its exit code where known."""
