"""``Service``: something that runs between ``start()`` and ``stop()`` and so serves as ``async with``; the simulator's
server and its webhook sender are services. Only the lifecycle belongs here."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self


class Service(ABC):
    """``async with service:`` starts it and stops it again, however the block ends."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
