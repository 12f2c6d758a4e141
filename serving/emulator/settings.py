"""The emulator's environment: the only place that reads ``os.environ``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["EmulatorSettings"]


class EmulatorSettings(BaseSettings):
    """Environment variables that vLLM reads and the emulator honours.

    Attributes:
        runtime_lora_updating: the raw ``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` value.
    """

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=True, frozen=True)

    runtime_lora_updating: str = Field(default="0", alias="VLLM_ALLOW_RUNTIME_LORA_UPDATING")

    @property
    def allow_runtime_lora_updating(self) -> bool:
        """On for ``1`` or ``true`` in any case (vLLM's rule); anything else is off."""
        return self.runtime_lora_updating.strip().lower() in ("1", "true")
