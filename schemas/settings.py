"""Runtime configuration, read from the environment (``VALUEFLOW_*``) and validated up front.

A bad value stops the program with one line that names the variable, never a traceback from deep
inside a driver.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs


class ConfigError(ValueError):
    """A configuration value is unusable; the message names the variable."""


_DB_SCHEMES = {"postgresql", "postgres"}
_BROKER_SCHEMES = {"redis", "rediss", "redis+socket"}


def _check_url(var: str, url: str, schemes: set[str]) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a non-numeric port
    except ValueError as exc:
        raise ConfigError(f"{var}: not a valid URL ({exc}): {redact(url)!r}") from None
    if parts.scheme not in schemes:
        want = " or ".join(f"{s}://" for s in sorted(schemes))
        raise ConfigError(f"{var}: expected a {want} URL, got {redact(url)!r}")
    if parts.scheme != "redis+socket" and not parts.hostname and "host=" not in parts.query:
        raise ConfigError(f"{var}: URL has no host: {redact(url)!r}")
    return url


def redact(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable>"
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def _int(var: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(var)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{var}: expected an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{var}: must be >= {minimum}, got {value}")
    return value


DEFAULT_MAX_TEXT_CHARS = 100_000  # about 25k tokens: far above any answer we score, far below a runaway field


def max_text_chars() -> int:
    """``VALUEFLOW_MAX_TEXT_CHARS``: the longest input text accepted, in characters (default 100,000)."""
    return _int("VALUEFLOW_MAX_TEXT_CHARS", DEFAULT_MAX_TEXT_CHARS)


DEFAULT_JUDGE_VIEWS = 8  # each holds a fitted probe: a few MB and a few seconds to refit


def judge_views() -> int:
    """``VALUEFLOW_JUDGE_VIEWS``: how many judges a worker keeps for jobs' VIDB views (the embedding
    judge of each VIDB state jobs planned against, least recently used dropped; default 8)."""
    return _int("VALUEFLOW_JUDGE_VIEWS", DEFAULT_JUDGE_VIEWS)


# Not a setting: the embedded default, once started, exports its URLs to this process's environment
# (and so to the workers it spawns) and names here the home whose servers they are, so that the
# process and its children still know the URLs are the embedded ones (``Settings.embedded``).
EMBEDDED_HOME_VAR = "VALUEFLOW_EMBEDDED_HOME"


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    broker_url: str | None
    home: Path
    judges_file: Path | None
    chunk_size: int  # windows per judge task
    max_redeliveries: int  # a chunk started more often than this is failed, not retried forever
    visibility_timeout: int  # seconds; longer than the longest task
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS  # longest input text accepted
    judge_views: int = DEFAULT_JUDGE_VIEWS  # judges a worker keeps for jobs' VIDB views
    stall_warn_s: int = 600  # a watched job that moves no further for this long gets a hint
    heartbeat_s: int = 15  # a worker process says it is alive this often; silent for 4 beats = dead
    sweep_s: int = 60  # a worker looks for lost tasks this often (one worker at a time); 0: never
    urls_exported: bool = False  # the URLs are the embedded servers', exported by resolve_urls

    @property
    def embedded(self) -> bool:
        """True when no servers are configured and the private ones under ``home`` are used (also
        after their URLs were exported to the environment: :data:`EMBEDDED_HOME_VAR`)."""
        return (self.database_url is None and self.broker_url is None) or self.urls_exported


def load_settings() -> Settings:
    """Read and validate every ``VALUEFLOW_*`` variable."""
    db = os.environ.get("VALUEFLOW_DATABASE_URL") or None
    broker = os.environ.get("VALUEFLOW_BROKER_URL") or None
    if db is not None:
        _check_url("VALUEFLOW_DATABASE_URL", db, _DB_SCHEMES)
    if broker is not None:
        _check_url("VALUEFLOW_BROKER_URL", broker, _BROKER_SCHEMES)
    if (db is None) != (broker is None):
        missing = "VALUEFLOW_BROKER_URL" if broker is None else "VALUEFLOW_DATABASE_URL"
        raise ConfigError(f"{missing}: must be set too (set both URLs, or neither for the embedded default)")
    home = Path(os.environ.get("VALUEFLOW_HOME") or platformdirs.user_data_dir("valueflow"))
    judges = os.environ.get("VALUEFLOW_JUDGES_FILE")
    if judges and not Path(judges).is_file():
        raise ConfigError(f"VALUEFLOW_JUDGES_FILE: no such file: {judges}")
    return Settings(
        database_url=db,
        broker_url=broker,
        home=home,
        judges_file=Path(judges) if judges else None,
        chunk_size=_int("VALUEFLOW_CHUNK_SIZE", 256),
        max_redeliveries=_int("VALUEFLOW_MAX_REDELIVERIES", 5),
        visibility_timeout=_int("VALUEFLOW_VISIBILITY_TIMEOUT", 4 * 3600, minimum=60),
        max_text_chars=max_text_chars(),
        judge_views=judge_views(),
        stall_warn_s=_int("VALUEFLOW_STALL_WARN_S", 600),
        heartbeat_s=_int("VALUEFLOW_HEARTBEAT_S", 15),
        sweep_s=_int("VALUEFLOW_SWEEP_S", 60, minimum=0),
        urls_exported=db is not None and os.environ.get(EMBEDDED_HOME_VAR) == str(home),
    )
