"""``strategy: full``: fine-tune the whole encoder as ``optim`` says (the default); nothing changes in the loop."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmrec.strategies.components import Strategy


class FullStrategy(Strategy):
    name: Literal["full"] = Field("full", description="Fine-tune the whole encoder as ``optim`` says (the default).")
