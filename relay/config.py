"""Settings: embedded defaults, overridden by an optional YAML file.

Every setting is a dataclass field, so the defaults live in one place and a
typo in the file is caught at start ("unknown key 'server.prot'") instead of
being silently ignored.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from relay.names import STREAM_NAME_RULE, token_problem, valid_stream_name

# A path prefix a reverse proxy serves Relay under: /relay, /live/relay (no trailing slash).
BASE_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+")


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the key."""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    cors_origins: list[str] = field(default_factory=lambda: ["*"])
    max_body_bytes: int = 64 * 1024
    body_timeout: float = 10.0
    header_timeout: float = 10.0
    keepalive_timeout: float = 15.0
    shutdown_grace: float = 5.0
    # Deployment (docs/deploy.md): TLS, and running behind a reverse proxy.
    tls_cert: str | None = None
    tls_key: str | None = None
    trusted_proxies: list[str] = field(default_factory=list)
    base_path: str = ""


@dataclass
class IceServer:
    urls: list[str] = field(default_factory=list)
    username: str | None = None
    credential: str | None = None


@dataclass
class IceConfig:
    servers: list[IceServer] = field(default_factory=list)
    host_addresses: list[str] = field(default_factory=list)
    connect_timeout: float = 10.0
    consent_timeout: float = 10.0
    # Deployment (docs/deploy.md): NAT, firewalls.
    public_addresses: list[str] = field(default_factory=list)
    keep_private_candidates: bool = False
    port_range: list[int] = field(default_factory=list)


@dataclass
class CodecConfig:
    video: list[str] = field(default_factory=lambda: ["VP8", "H264", "VP9", "AV1"])
    audio: list[str] = field(default_factory=lambda: ["opus"])


@dataclass
class ForwardConfig:
    hole_wait: float = 0.2
    keyframe_min_interval: float = 0.5
    keyframe_retry_interval: float = 1.0
    gop_replay_bitrate: int = 20_000_000
    takeover_idle: float = 2.0
    reconnect_grace: float = 30.0


@dataclass
class StreamRecordingConfig:
    enabled: bool = True


@dataclass
class RecordingConfig:
    enabled: bool = False
    dir: str = "recordings"
    segment_seconds: float = 0.0
    max_age_hours: float = 0.0
    max_total_mb: float = 0.0
    streams: dict[str, StreamRecordingConfig] = field(default_factory=dict)


@dataclass
class StreamAuthConfig:
    publish_token: str | None = None
    view_token: str | None = None


@dataclass
class AuthConfig:
    open_publish: bool = True
    publish_token: str | None = None
    view_token: str | None = None
    metrics_token: str | None = None
    streams: dict[str, StreamAuthConfig] = field(default_factory=dict)


@dataclass
class LimitsConfig:
    max_streams: int = 100
    max_viewers_per_stream: int = 500
    max_pending_per_address: int = 8
    max_pending: int = 256
    max_candidates_per_patch: int = 64
    requests_per_second: float = 10.0
    request_burst: int = 30
    tracked_clients: int = 10000
    max_connections_per_address: int = 64


@dataclass
class DataConfig:
    viewer_buffer_bytes: int = 256 * 1024
    max_channels_per_session: int = 8
    max_message_bytes: int = 64 * 1024


@dataclass
class StreamChatConfig:
    enabled: bool = True


@dataclass
class ChatConfig:
    enabled: bool = True
    history: int = 50
    max_length: int = 500
    messages_per_second: float = 1.0
    burst: int = 5
    max_name_length: int = 32
    streams: dict[str, StreamChatConfig] = field(default_factory=dict)


@dataclass
class BotConfig:
    """A media bot `relay serve` runs on a stream (see relay/client/bot.py)."""

    stream: str = ""
    bot: str = ""  # MODULE:OBJECT
    output: str | None = None  # the stream it publishes; None: the name the bot gives to publish(), if any


@dataclass
class OriginConfig:
    """Edge mode: streams this server does not carry are pulled from `url` over WHEP."""

    url: str | None = None
    token: str | None = None
    linger: float = 5.0


@dataclass
class DirectoryConfig:
    """Several origins: each registers its live streams in Redis, edges look them up there."""

    redis_url: str | None = None
    advertise: str | None = None
    ttl: float = 10.0


@dataclass
class WorkersConfig:
    """Viewer sessions spread over worker processes (`relay serve --workers`); 0: one per CPU."""

    count: int = 0


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    ice: IceConfig = field(default_factory=IceConfig)
    codecs: CodecConfig = field(default_factory=CodecConfig)
    forwarding: ForwardConfig = field(default_factory=ForwardConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    bots: list[BotConfig] = field(default_factory=list)
    origin: OriginConfig = field(default_factory=OriginConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    directory: DirectoryConfig = field(default_factory=DirectoryConfig)


VIDEO_CODECS = {"VP8", "VP9", "AV1", "H264"}
AUDIO_CODECS = {"opus"}


def _convert(value: Any, kind: Any, key: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        return None if value is None else _convert(value, options[0], key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(kind)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        item = typing.get_args(kind)[1]
        return {str(k): _convert(v, item, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, key)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")


def _build(cls: Any, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"{full}: unknown key (known: {', '.join(sorted(names))})")
        kwargs[key] = _convert(value, hints[key], full)
    return cls(**kwargs)


def validate(config: Config) -> None:
    """Raise ConfigError naming the first bad key; run again after command-line overrides."""
    for key in ("body_timeout", "header_timeout", "keepalive_timeout"):
        if getattr(config.server, key) <= 0:
            raise ConfigError(f"server.{key}: must be a positive number of seconds")
    if not config.server.host:
        raise ConfigError("server.host: give an address to listen on (127.0.0.1, 0.0.0.0, ::)")
    if not 0 < config.server.port < 65536:
        raise ConfigError(f"server.port: {config.server.port} is not a TCP port (1-65535)")
    for i, name in enumerate(config.codecs.video):
        if name not in VIDEO_CODECS:
            raise ConfigError(f"codecs.video[{i}]: {name!r} is not one of {sorted(VIDEO_CODECS)}")
    for i, name in enumerate(config.codecs.audio):
        if name not in AUDIO_CODECS:
            raise ConfigError(f"codecs.audio[{i}]: {name!r} is not one of {sorted(AUDIO_CODECS)}")
    if not config.codecs.video and not config.codecs.audio:
        raise ConfigError("codecs: at least one video or audio codec is needed")
    for i, server in enumerate(config.ice.servers):
        if not server.urls:
            raise ConfigError(f"ice.servers[{i}].urls: at least one stun:/turn: URL is needed")
        for url in server.urls:
            if not url.startswith(("stun:", "stuns:", "turn:", "turns:")):
                raise ConfigError(f"ice.servers[{i}].urls: {url!r} must start with stun: or turn:")
    for key in ("connect_timeout", "consent_timeout"):
        if getattr(config.ice, key) <= 0:
            raise ConfigError(f"ice.{key}: must be a positive number of seconds")
    if config.forwarding.takeover_idle < 0:
        raise ConfigError("forwarding.takeover_idle: 0 (only with the publish token) or a number of seconds")
    if config.forwarding.reconnect_grace < 0:
        raise ConfigError("forwarding.reconnect_grace: 0 (viewers end with their publisher) or a number of seconds")
    _validate_deployment(config)
    _validate_recording(config.recording)
    _validate_auth(config.auth)
    _validate_limits(config.limits)
    _validate_data(config.data, config.chat)
    _validate_bots(config.bots)
    _validate_origin(config.origin, config.workers)
    if config.workers.count > 1 and config.server.tls_cert is not None:
        # the main process's socket for its workers' pulls would be TLS too (aiohttp puts one context on every site)
        raise ConfigError("workers.count: worker processes and server.tls_cert do not mix: terminate TLS in "
                          "a reverse proxy (docs/deploy.md) or set workers.count: 1 (0 means 1 with TLS)")
    _validate_directory(config.directory)


def _validate_deployment(config: Config) -> None:
    """TLS files, proxies, path prefix, public addresses and the port range."""
    server, ice = config.server, config.ice
    if (server.tls_cert is None) != (server.tls_key is None):
        raise ConfigError("server.tls_cert, server.tls_key: give both (a PEM certificate chain and its key) or neither")
    for i, proxy in enumerate(server.trusted_proxies):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(f"server.trusted_proxies[{i}]: {proxy!r} is not an address or CIDR "
                              "(e.g. 127.0.0.1 or 10.0.0.0/8)") from None
    if server.base_path and not BASE_PATH.fullmatch(server.base_path):
        raise ConfigError(f"server.base_path: {server.base_path!r} must be \"\" or a path like /relay "
                          "(leading slash, no trailing slash, letters, digits, - _ . ~ /)")
    for i, address in enumerate(ice.public_addresses):
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ConfigError(f"ice.public_addresses[{i}]: {address!r} is not an IP address") from None
    if ice.port_range:
        if len(ice.port_range) != 2 or not 1024 <= ice.port_range[0] <= ice.port_range[1] <= 65535:
            raise ConfigError(f"ice.port_range: {ice.port_range} must be [] (any port) or [low, high] "
                              "with 1024 <= low <= high <= 65535")


def _validate_origin(origin: OriginConfig, workers: WorkersConfig) -> None:
    if origin.url is not None and not origin.url.startswith(("http://", "https://")):
        raise ConfigError(f"origin.url: {origin.url!r} must be an http:// or https:// URL")
    problem = token_problem(origin.token)
    if problem:
        raise ConfigError(f"origin.token: {problem}")
    if origin.linger < 0:
        raise ConfigError("origin.linger: 0 (end at once) or a number of seconds")
    if workers.count < 0:
        raise ConfigError("workers.count: 0 (one per CPU) or a number of processes")


def _validate_directory(directory: DirectoryConfig) -> None:
    if directory.redis_url is not None and not directory.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"directory.redis_url: {directory.redis_url!r} must be a redis://, rediss:// or unix:// URL")
    if directory.advertise is not None:
        if directory.redis_url is None:
            raise ConfigError("directory.advertise: set directory.redis_url too (where to register the streams)")
        if not directory.advertise.startswith(("http://", "https://")):
            raise ConfigError(f"directory.advertise: {directory.advertise!r} must be an http:// or https:// URL")
    if directory.ttl < 1:
        raise ConfigError("directory.ttl: at least 1 second")


def _validate_recording(recording: RecordingConfig) -> None:
    if not recording.dir:
        raise ConfigError("recording.dir: give a directory for the recordings")
    if recording.segment_seconds and recording.segment_seconds < 1:
        raise ConfigError("recording.segment_seconds: 0 (one file per publish) or at least 1")
    for key in ("max_age_hours", "max_total_mb"):
        if getattr(recording, key) < 0:
            raise ConfigError(f"recording.{key}: 0 (no limit) or a positive number")
    for name in recording.streams:
        if not valid_stream_name(name):
            raise ConfigError(f"recording.streams.{name}: not a stream name ({STREAM_NAME_RULE})")


def _validate_auth(auth: AuthConfig) -> None:
    tokens = {"auth": auth, **{f"auth.streams.{name}": s for name, s in auth.streams.items()}}
    for prefix, section in tokens.items():
        for key in ("publish_token", "view_token"):
            problem = token_problem(getattr(section, key))
            if problem:
                raise ConfigError(f"{prefix}.{key}: {problem}")
    problem = token_problem(auth.metrics_token)
    if problem:
        raise ConfigError(f"auth.metrics_token: {problem}")
    for name in auth.streams:
        if not valid_stream_name(name):
            raise ConfigError(f"auth.streams.{name}: not a stream name ({STREAM_NAME_RULE})")


def _validate_limits(limits: LimitsConfig) -> None:
    for key in ("max_streams", "max_viewers_per_stream", "max_pending_per_address", "max_pending",
                "max_candidates_per_patch", "requests_per_second", "max_connections_per_address"):
        if getattr(limits, key) < 0:
            raise ConfigError(f"limits.{key}: 0 (no limit) or a positive number")
    if limits.requests_per_second and limits.request_burst < 1:
        raise ConfigError("limits.request_burst: at least 1 request")
    if limits.tracked_clients < 1:
        raise ConfigError("limits.tracked_clients: at least 1 client address")


def _validate_data(data: DataConfig, chat: ChatConfig) -> None:
    for key in ("viewer_buffer_bytes", "max_channels_per_session", "max_message_bytes"):
        if getattr(data, key) < 1:
            raise ConfigError(f"data.{key}: must be at least 1")
    for key in ("max_length", "messages_per_second", "burst", "max_name_length"):
        if getattr(chat, key) <= 0:
            raise ConfigError(f"chat.{key}: must be positive")
    if chat.history < 0:
        raise ConfigError("chat.history: 0 (none) or a number of messages")
    for name in chat.streams:
        if not valid_stream_name(name):
            raise ConfigError(f"chat.streams.{name}: not a stream name ({STREAM_NAME_RULE})")


def _validate_bots(bots: list[BotConfig]) -> None:
    for i, bot in enumerate(bots):
        if not valid_stream_name(bot.stream):
            raise ConfigError(f"bots[{i}].stream: {bot.stream!r} is not a stream name ({STREAM_NAME_RULE})")
        module, _, name = bot.bot.rpartition(":")
        if not module or not name.isidentifier():
            raise ConfigError(f"bots[{i}].bot: {bot.bot!r} is not MODULE:OBJECT (e.g. examples.motion:bot)")
        if bot.output is not None and (not valid_stream_name(bot.output) or bot.output == bot.stream):
            raise ConfigError(f"bots[{i}].output: {bot.output!r} is not a stream name other than its input "
                              f"({STREAM_NAME_RULE})")


def load_config(path: str | Path | None = None, data: dict[str, Any] | None = None) -> Config:
    """Defaults, overridden by the YAML file at `path` or the mapping `data`."""
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    config = _build(Config, data, "")
    validate(config)
    return config
