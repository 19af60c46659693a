"""Settings: one model per service, one home for every knob.

Each field has a default and a description; the same field is the env var `VOXGRID_<SERVICE>_<FIELD>`,
the CLI flag `--field-name` of `voxgrid serve <service>` (flags override env), the Helm value, and a row
of the README's settings table (`voxgrid settings <service> --markdown` prints it).
"""

from __future__ import annotations

import argparse
import contextlib
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseSettings):
    """What the server chassis needs; every service's settings extend this."""

    model_config = SettingsConfigDict(env_prefix="VOXGRID_", extra="forbid")

    host: str = Field("127.0.0.1", description="Address the gRPC server binds (0.0.0.0 in containers).")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(
        -1, ge=-1, le=65535, description="Prometheus /metrics port; 0 picks a free one, -1 disables it."
    )
    health_port: int = Field(
        0, ge=0, le=65535, description="Plaintext port serving only gRPC health (same status as the main port), "
        "for probes that cannot speak TLS, such as the kubelet's gRPC probe; 0 turns it off.")
    max_sessions: int = Field(
        64, ge=1, description="Concurrent streams this replica serves; more get RESOURCE_EXHAUSTED."
    )
    auth_tokens: str = Field(
        "", description="Comma-separated bearer tokens accepted; empty (and no token file) disables auth."
    )
    auth_token_file: Path | None = Field(
        None, description="File with one accepted bearer token per line (a mounted Secret); re-read on change."
    )
    tls_cert_file: Path | None = Field(None, description="PEM certificate chain; with tls_key_file enables TLS.")
    tls_key_file: Path | None = Field(None, description="PEM private key for tls_cert_file.")
    drain_grace_s: float = Field(
        30.0, ge=0, description="After SIGTERM, seconds live streams get to finish before the server closes."
    )
    max_message_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest gRPC message accepted or sent, bytes."
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: Literal["text", "json"] = Field("text", description="`json` for one JSON object per line.")


def _scalar_type(annotation: Any) -> Any:
    """The argparse type for a field annotation (Optional[X] -> X)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar_type(args[0])
    if typing.get_origin(annotation) is Literal:
        return str
    return annotation


def add_settings_flags(parser: argparse.ArgumentParser, settings_cls: type[BaseSettings]) -> None:
    """One --flag per settings field; unset flags leave env/defaults in charge."""
    for name, field in settings_cls.model_fields.items():
        typ = _scalar_type(field.annotation)
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description} [env {env_name(settings_cls, name)}, default {field.default!r}]"
        if typ is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is Literal else None
            parser.add_argument(
                flag, dest=name, type=typ if typ in (int, float, str, Path) else str,
                default=None, choices=choices, help=help_text,
            )


def settings_from_args(settings_cls: type[BaseSettings], args: argparse.Namespace) -> BaseSettings:
    overrides = {n: getattr(args, n) for n in settings_cls.model_fields if getattr(args, n, None) is not None}
    return settings_cls(**overrides)


def env_name(settings_cls: type[BaseSettings], field: str) -> str:
    return (settings_cls.model_config.get("env_prefix") or "") .upper() + field.upper()


def settings_table(settings_cls: type[BaseSettings]) -> str:
    """Markdown table of a settings model (README generation)."""
    rows = ["| env var | flag | default | meaning |", "|---|---|---|---|"]
    for name, field in settings_cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        rows.append(f"| `{env_name(settings_cls, name)}` | `{flag}` | `{field.default!r}` | {field.description} |")
    return "\n".join(rows)


def accepted_tokens(settings: ServerSettings) -> set[str]:
    """Bearer tokens from the env list and the token file (blank lines and #comments ignored)."""
    tokens = {t.strip() for t in settings.auth_tokens.split(",") if t.strip()}
    if settings.auth_token_file is not None:
        for line in Path(settings.auth_token_file).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                tokens.add(line)
    return tokens


class TokenSource:
    """Accepted tokens, re-read from the token file when it changes (a rotated Secret is picked up without a
    restart). One for every listener that checks bearer tokens: the services' gRPC chassis and the gateway's
    HTTP paths."""

    def __init__(self, settings: ServerSettings) -> None:
        self._settings = settings
        self._mtime: float | None = None
        self._tokens = accepted_tokens(settings)

    def __call__(self) -> set[str]:
        path = self._settings.auth_token_file
        if path is not None:
            with contextlib.suppress(OSError):
                mtime = path.stat().st_mtime
                if mtime != self._mtime:
                    self._mtime = mtime
                    self._tokens = accepted_tokens(self._settings)
        return self._tokens
