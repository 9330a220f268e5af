"""The one typed settings object of neuroseg.

Values come, highest priority first, from:

1. environment variables prefixed ``NEUROSEG_`` (``NEUROSEG_PORT=11113``);
2. an optional TOML or YAML config file (``neuroseg --config FILE`` or
   ``NEUROSEG_CONFIG=FILE``) whose keys are the field names without the prefix;
3. the defaults below.

The names are a public contract (admins script against them): add fields, never
rename them. Build the settings once with :func:`get_settings` and pass them
down; nothing else in neuroseg reads the environment.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import tomllib
from collections.abc import Callable, Iterable
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from neuroseg.common.enums import CpuBackend, MapCompression

log = logging.getLogger(__name__)

ENV_PREFIX = "NEUROSEG_"
CONFIG_FILE_VARIABLE = "NEUROSEG_CONFIG"

# DICOM PS3.5 AE title: 1-16 characters of the default repertoire, no backslash
# or control characters; leading/trailing spaces are not significant.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


class SettingsError(ValueError):
    """A setting has a value that neuroseg cannot use; the message names it."""


def check_ae_title(value: str) -> str:
    """Return ``value`` stripped if it is a valid DICOM AE title, else raise ``ValueError``."""
    stripped = value.strip()
    if not stripped or not _AE_TITLE.match(stripped):
        raise ValueError(
            f"{value!r} is not a DICOM AE title (1-16 printable ASCII characters, no backslash)"
        )
    return stripped


class DicomDestination(BaseModel):
    """A DICOM C-STORE destination written as ``AET@host:port``."""

    kind: Literal["dicom"] = "dicom"
    ae_title: str = Field(min_length=1, max_length=16)
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return check_ae_title(value)

    @classmethod
    def parse(cls, text: str) -> "DicomDestination":
        """Parse ``AET@host:port`` (IPv6 hosts in brackets: ``AET@[::1]:104``)."""
        match = re.fullmatch(r"\s*([^@]+)@(\[[^\]]+\]|[^:@\s]+):(\d+)\s*", text)
        if not match:
            raise ValueError(f"{text!r} is not a destination of the form AET@host:port "
                             "(or a DICOMweb base URL, https://host/dicom-web)")
        ae_title, host, port = match.groups()
        return cls(ae_title=ae_title, host=host.strip("[]"), port=int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class DicomWebDestination(BaseModel):
    """A DICOMweb STOW-RS destination written as its base URL, ``https://host/dicom-web``."""

    kind: Literal["dicomweb"] = "dicomweb"
    url: str

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not a DICOMweb base URL such as https://pacs.example.org/dicom-web")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError(f"{value!r}: give the base URL alone; credentials go in NEUROSEG_DICOMWEB_USERNAME/"
                             "PASSWORD or NEUROSEG_DICOMWEB_TOKEN")
        return value.strip().rstrip("/")

    def __str__(self) -> str:
        return self.url


Destination = Annotated[DicomDestination | DicomWebDestination, Field(discriminator="kind")]


def parse_destination(text: str) -> DicomDestination | DicomWebDestination:
    """``AET@host:port`` (C-STORE) or an ``http(s)://.../dicom-web`` base URL (STOW-RS)."""
    if re.match(r"\s*https?://", text, re.IGNORECASE):
        return DicomWebDestination(url=text)
    return DicomDestination.parse(text)


class SegmentationKind(str, Enum):
    BINARY = "BINARY"
    LABELMAP = "LABELMAP"


class MapKind(str, Enum):
    """Parametric maps that can be sent back to the PACS."""

    PROBABILITY = "probability"
    ENTROPY = "entropy"  # the entropy map alone
    UNCERTAINTY = "uncertainty"  # entropy plus the MC dropout SD of each class
    GRADCAM = "gradcam"


class MeshFormat(str, Enum):
    STL = "stl"
    SURFACE_SEGMENTATION = "surface"


class ReportKind(str, Enum):
    """Renderings for viewers without SEG or Parametric Map support."""

    KEY_IMAGES = "keyimages"
    PDF = "pdf"


class FrameOfReferencePolicy(str, Enum):
    """What to do when the sequences of a study have different frames of reference."""

    REGISTER = "register"
    REFUSE = "refuse"


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CommaList = Annotated[list[str], NoDecode]


class _ConfigFileSource(InitSettingsSource):
    """Reads the optional TOML/YAML config file named by ``NEUROSEG_CONFIG``."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        data: dict[str, Any] = {}
        if path is not None:
            data = read_config_file(path)
            refuse_unknown_names(data, settings_cls.model_fields, where=f"config file {path}: ")
        super().__init__(settings_cls, data)


def refuse_unknown_names(
    names: Iterable[str], valid: Iterable[str], where: str = "", spell: Callable[[str], str] = str
) -> None:
    """Raise :class:`SettingsError` naming each of ``names`` not in ``valid``, with the closest valid name.

    A misspelt setting must stop start-up: silently ignoring it would, for
    example, send every result to the outbox instead of the PACS. ``spell``
    writes a name the way the admin typed it (``NEUROSEG_`` + upper case for
    environment variables).
    """
    valid = sorted(valid)
    unknown = sorted(set(names) - set(valid))
    if not unknown:
        return
    problems = []
    for name in unknown:
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        hint = f"did you mean {spell(close[0])}?" if close else "the README's settings table lists every name"
        problems.append(f"unknown setting {spell(name)}; {hint}")
    raise SettingsError(where + "; ".join(problems))


def _refuse_unknown_environment(field_names: Iterable[str]) -> None:
    """Refuse a ``NEUROSEG_*`` environment variable that names no setting (derived from the fields)."""
    config_name = CONFIG_FILE_VARIABLE.removeprefix(ENV_PREFIX).lower()
    # compared without the shared prefix (it would make every name look alike), case-insensitively
    # as pydantic-settings reads them
    present = {name[len(ENV_PREFIX):].lower() for name in os.environ if name.upper().startswith(ENV_PREFIX)}
    refuse_unknown_names(present, {*field_names, config_name}, spell=lambda name: ENV_PREFIX + name.upper())


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"config file {path} does not exist")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(path.read_text()) or {}
        else:
            raise SettingsError(f"config file {path}: use a .toml, .yaml or .yml file")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise SettingsError(f"config file {path} cannot be parsed: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a table of settings")
    return {str(key).lower(): value for key, value in data.items()}


class Settings(BaseSettings):
    """Every setting of neuroseg; the environment variable is ``NEUROSEG_`` + the upper-case name."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, frozen=True
    )

    # --- where things live -------------------------------------------------
    data_dir: Path = Field(Path("./neuroseg-data"), description="spool, outbox, embedded broker, SQLite")

    # --- DICOM in (listener) ------------------------------------------------
    ae_title: str = Field("NEUROSEG", description="our AE title")
    port: int = Field(11112, ge=1, le=65535, description="DICOM listener port")
    bind_address: str = Field("0.0.0.0", description="address the DICOM listener binds to")
    allowed_calling_aes: CommaList = Field(
        default_factory=list, description="comma list of calling AE titles; empty means any"
    )
    tls_cert: Path | None = Field(None, description="PEM certificate: turns on DICOM TLS")
    tls_key: Path | None = Field(None, description="PEM private key for the certificate")
    tls_ca: Path | None = Field(None, description="PEM CA bundle; when set, peers must present a certificate")
    stable_seconds: float = Field(30.0, gt=0, description="quiet time before a study counts as complete")
    max_wait_seconds: float = Field(600.0, gt=0, description="longest wait for the required sequences")
    classification_rules: Path | None = Field(
        None, description="YAML rules for series classification; unset means the shipped rules"
    )
    max_pdu_size: int = Field(0, ge=0, description="largest PDU we accept; 0 means unlimited")
    intake_journal_mb: int = Field(
        64, ge=0, le=4096, description="size of the listener's intake journal, which makes each received instance "
        "durable with one flush instead of two (file and folder); 0 turns it off"
    )

    # --- queue and job store (worker) ----------------------------------------
    broker_url: str | None = Field(None, description="Celery broker; unset means the embedded filesystem broker")
    database_url: str | None = Field(None, description="job store; unset means SQLite in the data dir")
    task_soft_time_limit: int = Field(3600, gt=0, description="seconds before a job is asked to stop")
    task_time_limit: int = Field(3900, gt=0, description="seconds before a job is killed")
    frame_of_reference_policy: FrameOfReferencePolicy = Field(
        FrameOfReferencePolicy.REGISTER, description="sequences in different frames of reference"
    )
    coregister: bool = Field(
        True, description="rigidly co-register every sequence to the reference, undoing patient motion between series"
    )
    retention_days: float = Field(7.0, ge=0, description="days to keep spool data after successful delivery")
    retry_on_cpu: bool = Field(True, description="retry a job on the CPU after a CUDA out-of-memory error")
    oom_max_retries: int = Field(
        3, ge=0, description="retries with backoff after a CUDA out-of-memory error when retry_on_cpu is off"
    )
    job_stale_seconds: float = Field(
        120.0, gt=0, description="a running job without a worker heartbeat for this long is taken over"
    )
    job_max_attempts: int = Field(5, ge=1, description="times a job may be started before it fails for good")

    # --- model ------------------------------------------------------------------
    model_path: Path | None = Field(
        None, description="our checkpoint (.pt) or a MONAI bundle folder or zip; unset means the shipped demo weights"
    )
    mc_samples: int = Field(20, ge=1, le=200, description="Monte Carlo dropout passes")
    tta: bool = Field(False, description="test-time augmentation by flips (7 more passes); its variance is kept apart")
    gradcam_layer: str = Field("", description="Grad-CAM target layer (trunk.output, trunk.decoders.N, "
                               "trunk.encoders.N); empty: the second-to-last decoder stage")
    postprocess: bool = Field(True, description="BraTS post-processing of the labels (small components, minimum ET)")
    min_et_ml: float = Field(0.5, ge=0, description="total ET below this (mL) becomes NCR (with postprocess)")
    min_component_ml: float = Field(
        0.2, ge=0, description="tumour components below this (mL) are removed, the largest kept (with postprocess)"
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    cpu_backend: CpuBackend = Field(
        CpuBackend.AUTO, description="network on a CPU: auto (bf16 autocast where the CPU has native bf16 and a "
        "check window's labels agree on >= 99.9 % of head voxels, else fp32), fp32 or bf16")

    # --- DICOM out ----------------------------------------------------------------
    destinations: Annotated[list[Destination], NoDecode] = Field(
        default_factory=list,
        description="comma list of AET@host:port (C-STORE) or https://.../dicom-web (STOW-RS); unset: the outbox",
    )
    calling_ae_title: str = Field("NEUROSEG", description="AE title we use when sending results")
    segmentation_type: SegmentationKind = Field(SegmentationKind.BINARY, description="BINARY or LABELMAP SEG")
    reference_role: str = Field("T1ce", description="sequence whose grid the results are written on (fallback FLAIR)")
    send_maps: Annotated[list[MapKind], NoDecode] = Field(
        default_factory=lambda: [MapKind.PROBABILITY, MapKind.ENTROPY],
        description="comma list of probability, entropy, uncertainty (entropy + SD per class), gradcam",
    )
    mesh_formats: Annotated[list[MeshFormat], NoDecode] = Field(
        default_factory=lambda: [MeshFormat.STL], description="comma list of stl, surface"
    )
    map_compression: MapCompression = Field(
        MapCompression.DEFLATE,
        description="Parametric Map encoding: deflate (float32, deflated; OHIF shows it), jpegls, rle or none (uint16)",
    )
    send_reports: Annotated[list[ReportKind], NoDecode] = Field(
        default_factory=lambda: [ReportKind.KEY_IMAGES, ReportKind.PDF],
        description="comma list of keyimages (Secondary Capture), pdf (Encapsulated PDF report); empty for none",
    )
    followup: bool = Field(True, description="compare each study with the patient's newest earlier processed "
                           "study: volumes at both time points, a change SEG, the prior in the SR")
    prior_query: bool = Field(False, description="when a study has no processed prior, C-FIND the first DICOM "
                              "destination for the patient's earlier MR studies and C-GET the newest one we never "
                              "processed, through our own listener, to process it first and compare")
    prior_intake: DicomDestination | None = Field(
        None, description="AET@host:port of the listener that takes a prior fetched from the PACS; unset: our own "
        "listener (AE title and port, at 127.0.0.1 or the bind address); set it when the listener runs elsewhere")
    delivery_associations: int = Field(
        2, ge=1, le=8, description="associations that send a study's objects to one C-STORE destination at once"
    )
    delivery_max_retries: int = Field(
        12, ge=0, description="retries with backoff (PACS or DICOMweb server down) before giving up"
    )
    dicomweb_username: str | None = Field(None, description="DICOMweb destinations: user for HTTP basic auth")
    dicomweb_password: SecretStr | None = Field(None, description="DICOMweb destinations: password for basic auth")
    dicomweb_token: SecretStr | None = Field(None, description="DICOMweb destinations: bearer token (OAuth 2)")
    dicomweb_ca: Path | None = Field(None, description="PEM CA bundle to verify DICOMweb servers; unset: the system's")

    # --- admin web app ---------------------------------------------------------------
    admin_host: str = Field("127.0.0.1", description="admin app bind address")
    admin_port: int = Field(8080, ge=1, le=65535, description="admin app port")
    admin_token: SecretStr | None = Field(None, description="admin login secret; required to see patient data")
    flower_url: str | None = Field(None, description="link to a Flower monitor, shown on the dashboard")

    @field_validator("allowed_calling_aes", mode="before")
    @classmethod
    def _split_calling_aes(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("allowed_calling_aes")
    @classmethod
    def _check_calling_aes(cls, value: list[str]) -> list[str]:
        return [check_ae_title(item) for item in value]

    @field_validator("ae_title", "calling_ae_title")
    @classmethod
    def _check_own_ae(cls, value: str) -> str:
        return check_ae_title(value)

    @field_validator("destinations", mode="before")
    @classmethod
    def _parse_destinations(cls, value: Any) -> Any:
        items = _split_commas(value)
        if isinstance(items, list):
            return [parse_destination(item) if isinstance(item, str) else item for item in items]
        return items

    @field_validator("prior_intake", mode="before")
    @classmethod
    def _parse_prior_intake(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return None
            if not re.fullmatch(r"\s*[^@]+@(\[[^\]]+\]|[^:@\s]+):\d+\s*", value):
                raise ValueError(f"{value!r}: the prior intake is our DICOM listener, given as AET@host:port")
            return DicomDestination.parse(value)
        return value

    @field_validator("send_maps", "mesh_formats", "send_reports", mode="before")
    @classmethod
    def _split_enums(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N")
        return value

    @field_validator("reference_role")
    @classmethod
    def _check_reference_role(cls, value: str) -> str:
        allowed = {"T1": "T1", "T1CE": "T1ce", "T2": "T2", "FLAIR": "FLAIR"}
        if value.upper() not in allowed:
            raise ValueError(f"{value!r} is not a sequence role; use one of {', '.join(allowed.values())}")
        return allowed[value.upper()]

    @model_validator(mode="after")
    def _check_combinations(self) -> "Settings":
        if self.max_wait_seconds < self.stable_seconds:
            raise ValueError(
                f"max_wait_seconds ({self.max_wait_seconds}) must be at least stable_seconds ({self.stable_seconds})"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        if self.dicomweb_token is not None and self.dicomweb_username is not None:
            raise ValueError("set either dicomweb_token (bearer) or dicomweb_username/password (basic), not both")
        if (self.dicomweb_username is None) != (self.dicomweb_password is None):
            raise ValueError("dicomweb_username and dicomweb_password must be set together")
        if self.task_time_limit <= self.task_soft_time_limit:
            raise ValueError("task_time_limit must be larger than task_soft_time_limit")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        _refuse_unknown_environment(settings_cls.model_fields)
        config_file = os.environ.get(CONFIG_FILE_VARIABLE)
        file_source = _ConfigFileSource(settings_cls, Path(config_file) if config_file else None)
        return (init_settings, env_settings, file_source)

    # --- derived locations ------------------------------------------------------------
    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def results_dir(self) -> Path:
        """Per-job arrays and meshes kept for the 3D viewer."""
        return self.data_dir / "results"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'neuroseg.db').resolve()}"


def _describe(error: dict[str, Any]) -> str:
    location = ".".join(str(part) for part in error.get("loc", ())) or "settings"
    field = location.split(".")[0]
    name = f"{ENV_PREFIX}{field.upper()}" if field != "settings" else "settings"
    value = error.get("input")
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if isinstance(value, dict) or field == "settings":
        return f"{name}: {message}"
    return f"{name}={value!r}: {message}"


def load_settings(**overrides: Any) -> Settings:
    """Build a :class:`Settings`, turning validation errors into one clear :class:`SettingsError`.

    Keyword arguments override every other source (used by tests and the CLI).
    """
    refuse_unknown_names(overrides, Settings.model_fields)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [_describe(error) for error in exc.errors()]
        raise SettingsError("; ".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built on first call (never at import)."""
    return load_settings()


def describe_settings() -> list[tuple[str, str, str]]:
    """(environment variable, default, meaning) for each setting, for docs and ``--help``."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(item.value if isinstance(item, Enum) else str(item) for item in default)
        elif isinstance(default, Enum):
            default = default.value
        rows.append((f"{ENV_PREFIX}{name.upper()}", "" if default is None else str(default), field.description or ""))
    return rows
