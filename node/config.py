"""The node's configuration: one YAML file (``node.yaml``) validated with pydantic.

Every key has a default, so an empty file (or none) runs an embedded node: SQLite under ``./var``, DICOM port 11112,
results written to a local folder. Validation errors name the file, the line and the key path, e.g.::

    node.yaml line 14 (rules[0].match.SliceThickness): unknown key; allowed keys are Modality, BodyPartExamined, ...

Routing rules live in the same file under ``rules:``; their models are in this module so that the console, the
dry-run and the worker all validate them the same way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator, ValidationInfo

from node import destinations
from node.errors import UserError
from node.rule_patterns import PatternError, check_pattern

Output = Literal["dsr", "rigid_reg", "registered_series", "subtraction"]


class ConfigError(UserError, ValueError):
    """A configuration problem a person can fix; the message names the file, line and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TlsSettings(_Strict):
    """DICOM TLS on the listener (:func:`node.net.tls.server_context`, TLS >= 1.2): the node's certificate and key
    (PEM); with ``ca_file`` a client certificate a peer presents must be signed by that CA, and with
    ``require_client_cert`` every peer must present one. Outgoing associations use TLS per peer (``tls: true`` on
    a dicom destination)."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None  # verifies the client certificates peers present (all peers: require_client_cert)
    require_client_cert: bool = False


class NodeSettings(_Strict):
    """The DICOM listener and local storage."""

    ae_title: str = "TOTALREG"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    data_dir: Path = Path("./var")
    database: str | None = None  # default: sqlite:///<data_dir>/node.db
    allowed_callers: list[str] = Field(default_factory=list)  # empty: any calling AE title is accepted
    # IP addresses or networks (CIDR, e.g. 10.1.0.0/16) that may connect at all; empty: any. Checked at accept,
    # before a byte is read; allowed_callers is checked from the first 74 bytes of the A-ASSOCIATE-RQ.
    allowed_addresses: list[str] = Field(default_factory=list)
    max_associations: int = Field(16, ge=1, le=256)  # per receiver process
    # open connections one IP address may hold per receiver process (at most max_associations): below
    # max_associations, one stranger cannot take every slot
    max_associations_per_address: int = Field(8, ge=1, le=256)
    # ARTIM: an accepted connection must deliver its whole A-ASSOCIATE-RQ within this many seconds of connecting
    # (counted from the accept, so a half-open or idle connection is closed after it)
    acse_timeout_s: float = Field(30.0, gt=0)
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = Field(60.0, gt=0)  # also: the longest a PDU may stall mid-way
    # largest PDU a peer may send (announced as the association's maximum length; a longer P-DATA PDU is refused
    # from its header, before any of it is buffered)
    max_pdu_bytes: int = Field(4 * 1024 * 1024, ge=16 * 1024, le=2 ** 31 - 1)
    # largest data set of one C-STORE, as received and, for Deflated Explicit VR Little Endian, once inflated
    # (answered 0xA700 beyond it); 2 GiB holds the largest enhanced multi-frame objects
    max_dataset_bytes: int = Field(2 * 1024 ** 3, ge=1024 * 1024)
    # a deflated data set may inflate to at most this many times its size on the wire (and never beyond
    # max_dataset_bytes); inflated sizes below 64 MiB are always allowed.  Refuses deflate bombs (0xA700).
    max_inflation_ratio: float = Field(100.0, ge=1.0)
    fsync: bool = True
    min_free_disk_mb: int = Field(512, ge=0)  # below this the listener answers C-STORE with 0xA700 (out of resources)
    tls: TlsSettings | None = None
    # DICOM receiver processes accepting on node.port (one socket bound by the node process; each association
    # goes to the process with the fewest open ones), each with its own pynetdicom server and group-commit index
    # writer on the same database and spool. One Python process is held back by the GIL with several
    # associations; "auto" = min(CPU count, 4); 1 = receive in the node process only.
    receiver_processes: int | Literal["auto"] = "auto"

    @field_validator("receiver_processes")
    @classmethod
    def _receiver_processes(cls, v):
        if v != "auto" and not (1 <= v <= 64):
            raise ValueError("receiver_processes is 'auto' or a number from 1 to 64")
        return v

    @field_validator("allowed_addresses")
    @classmethod
    def _allowed_addresses(cls, v: list[str]) -> list[str]:
        import ipaddress
        for a in v:
            try:
                ipaddress.ip_network(a, strict=False)
            except ValueError:
                raise ValueError(f"'{a}' is not an IP address or network (e.g. 192.168.1.20 or 10.1.0.0/16)") \
                    from None
        return v

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, v: str) -> str:
        if not (1 <= len(v) <= 16) or "\\" in v or not v.strip():
            raise ValueError("an AE title is 1 to 16 characters, no backslash")
        return v

    def database_url(self) -> str:
        """SQLAlchemy URL of the node database (SQLite under data_dir unless configured)."""
        return self.database or f"sqlite:///{(self.data_dir / 'node.db').as_posix()}"


class CompletionSettings(_Strict):
    """When a received study counts as complete, and what happens to instances that arrive later."""

    quiet_seconds: float = Field(60.0, ge=0)
    max_wait_seconds: float = Field(5400.0, ge=0)  # force completion of a study that never goes quiet
    late_instances: Literal["follow_up", "ignore"] = "follow_up"


class PacsConfig(_Strict):
    """A PACS the node queries for priors: ``kind: dimse`` (C-FIND, study root; C-MOVE to the node, or C-GET) or
    ``kind: dicomweb`` (QIDO-RS, then WADO-RS of the chosen series; :mod:`node.priors.dicomweb`).

    TLS: a dimse PACS with ``tls: true`` is reached over DICOM TLS (TLS >= 1.2; PS3.15 B.1), its certificate
    checked against ``host`` and ``ca_file`` (default: the system's CAs); a dicomweb PACS by its ``https://`` url.
    Either way ``client_cert`` + ``client_key`` (PEM) are the node's certificate, presented when the PACS asks for
    one (mutual TLS). A C-MOVE comes back to the node's own listener: over TLS when ``node.tls`` is set."""

    name: str
    kind: Literal["dimse", "dicomweb"] = "dimse"
    ae_title: str | None = None  # dimse
    host: str | None = None  # dimse
    port: int | None = Field(None, ge=1, le=65535)  # dimse
    retrieve: Literal["move", "get"] = "move"
    move_destination: str | None = None  # AE title the PACS knows the node by; default: node.ae_title
    timeout_s: float = Field(600.0, gt=0)  # dimse: one retrieve; dicomweb: one WADO-RS series retrieve
    tls: bool = False  # dimse: associations over DICOM TLS (certificates below)
    # dicomweb: the service root (QIDO/WADO/STOW below it, e.g. https://pacs.example.org/dicom-web)
    url: str | None = None
    auth: Literal["none", "basic", "bearer"] = "none"
    username: str | None = None  # auth: basic
    password: str | None = None  # auth: basic
    token: str | None = None  # auth: bearer
    client_cert: Path | None = None  # mTLS (dicomweb, or dimse with tls): the node's certificate (PEM) ...
    client_key: Path | None = None  # ... and its key (PEM)
    ca_file: Path | None = None  # the CA bundle that signed the PACS's certificate (default: the system's)
    connect_timeout_s: float = Field(10.0, gt=0, le=600)
    read_timeout_s: float = Field(60.0, gt=0, le=3600)  # longest wait for the next bytes of one answer
    retries: int = Field(2, ge=0, le=10)  # further attempts after a connection error, timeout, 429 or 5xx
    retry_backoff_s: float = Field(1.0, ge=0, le=300)  # doubled after each attempt
    page_size: int = Field(100, ge=1, le=10000)  # QIDO-RS limit per request; further pages by offset

    @model_validator(mode="after")
    def _kind_fields(self) -> "PacsConfig":
        need = {"dimse": ("ae_title", "host", "port"), "dicomweb": ("url",)}[self.kind]
        missing = [k for k in need if getattr(self, k) in (None, "")]
        if missing:
            raise ValueError(f"a {self.kind} PACS needs {', '.join(missing)}")
        if self.kind == "dicomweb":
            if not str(self.url).startswith(("http://", "https://")):
                raise ValueError("a dicomweb PACS url starts with http:// or https://")
            if self.auth == "basic" and not (self.username and self.password is not None):
                raise ValueError("auth: basic needs username and password")
            if self.auth == "bearer" and not self.token:
                raise ValueError("auth: bearer needs token")
            if self.tls:
                raise ValueError("a dicomweb PACS uses TLS through an https:// url, not tls: true")
        elif (self.client_cert or self.ca_file) and not self.tls:
            raise ValueError("client_cert, client_key and ca_file of a dimse PACS need tls: true")
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("mTLS needs both client_cert and client_key")
        return self


class DestinationConfig(BaseModel):
    """Where results go: a ``name``, a ``kind`` and that kind's options, read as attributes (``dest.url``).

    The kinds and their options are the modules of :mod:`node.destinations`: ``dicom`` (C-STORE: ae_title, host,
    port), ``dicomweb`` (STOW-RS: url, username, password), ``orthanc`` (REST: url, username, password), ``folder``
    (path). The kind's own model checks its options (unknown keys refused, defaults filled in)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str
    kind: str = "dicom"

    @model_validator(mode="after")
    def _kind_options(self) -> "DestinationConfig":
        self.__pydantic_extra__ = destinations.validate_options(self.kind, dict(self.__pydantic_extra__ or {}))
        return self


class RetrySettings(_Strict):
    """Retries with exponential back-off; after max_attempts the item is 'dead' (re-sendable by an admin)."""

    max_attempts: int = Field(5, ge=1)
    backoff_s: float = Field(30.0, ge=0)
    backoff_factor: float = Field(2.0, ge=1)
    max_backoff_s: float = Field(3600.0, ge=0)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return min(self.max_backoff_s, self.backoff_s * self.backoff_factor ** max(0, attempt - 1))


class JobSettings(_Strict):
    """The persistent job queue and its workers."""

    workers: int = Field(1, ge=0)  # worker threads started by `totalreg serve` (0: only external `totalreg worker`)
    lease_s: float = Field(900.0, gt=0)  # a running job whose worker stops renewing its lease is re-queued
    retry: RetrySettings = Field(default_factory=lambda: RetrySettings(max_attempts=3, backoff_s=60.0))


class SliceThicknessRange(_Strict):
    min: float | None = Field(None, ge=0)
    max: float | None = Field(None, ge=0)


class RuleMatch(_Strict):
    """Which studies a rule takes. Every given criterion must hold; strings compare case-insensitively."""

    Modality: str | None = "CT"
    BodyPartExamined: list[str] | str | None = None
    StudyDescription: str | None = None  # regular expression (search)
    SeriesDescription: str | None = None  # regular expression; some series must match
    calling_ae: list[str] | str | None = None
    slice_thickness_mm: SliceThicknessRange | None = None
    min_slices: int | None = Field(None, ge=1)

    @field_validator("StudyDescription", "SeriesDescription")
    @classmethod
    def _regex(cls, v: str | None, info: ValidationInfo) -> str | None:
        """The pattern must suit RE2 (node.rule_patterns: linear time; no backreferences or lookaround)."""
        if v is not None:
            try:
                check_pattern(v)
            except PatternError as exc:
                name = info.context.get("rule_name") if isinstance(info.context, dict) else None
                rule = f"rule '{name}': " if name else ""
                raise ValueError(f"{rule}{info.field_name} pattern {v!r} is not a usable regular expression: "
                                 f"{exc}") from None
        return v


class PriorSpec(_Strict):
    """How the prior is chosen: same PatientID (and IssuerOfPatientID), an earlier study, within max_age_days."""

    max_age_days: int = Field(3650, ge=1)
    min_age_days: int = Field(0, ge=0)
    pick: Literal["most_recent", "all_within"] = "most_recent"
    within_days: int | None = Field(None, ge=1)  # for pick: all_within
    search_pacs: bool = True  # ask the configured PACS when no prior was received

    @model_validator(mode="after")
    def _within(self) -> "PriorSpec":
        if self.pick == "all_within" and self.within_days is None:
            raise ValueError("pick: all_within needs within_days")
        return self


class RegistrationSettings(_Strict):
    """Engine settings a rule may override. ``weights``: network weights (safetensors) for this rule's jobs;
    None = the node's ``registration.weights``, else the shipped file (never anything else)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    iterations: int | None = Field(None, ge=0)
    weights: Path | None = None
    dsr_grid_spacing_mm: float = Field(3.0, gt=0)


class NodeRegistrationSettings(_Strict):
    """``registration:`` of node.yaml: ``weights`` = network weights (safetensors, e.g. written by
    ``totalreg train --archive``) for every rule that names none; None = the shipped weights. The node uses other
    weights than the shipped ones only when this or a rule names them; every job report records their sha256."""

    weights: Path | None = None


class Rule(_Strict):
    """A routing rule: which studies, which prior, which outputs, where to send them."""

    name: str = Field(max_length=128)  # jobs.rule_name holds 128 characters: a longer name is refused, never cut
    enabled: bool = True
    match: RuleMatch = Field(default_factory=RuleMatch)
    prior: PriorSpec = Field(default_factory=PriorSpec)
    outputs: list[Output] = Field(default_factory=lambda: ["dsr", "rigid_reg", "registered_series"])
    send_to: list[str] = Field(default_factory=list)
    registration: RegistrationSettings = Field(default_factory=RegistrationSettings)

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one output")
        return v

    @model_validator(mode="before")
    @classmethod
    def _name_for_errors(cls, data: Any, info: ValidationInfo) -> Any:
        """Let RuleMatch's pattern check name this rule (through the validation context, when there is one)."""
        if isinstance(info.context, dict) and isinstance(data, dict):
            info.context["rule_name"] = data.get("name")
        return data


class WebSettings(_Strict):
    """The web console and REST API."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    secret_key: str | None = None  # default: generated once and kept in data_dir/secret_key
    admin_user: str = "admin"
    admin_password: str | None = None  # default: generated at first start, shown once on the terminal, hash only
    # cookies: HttpOnly + SameSite=Lax always; Secure on https requests, and on every response when this is true
    # (set it when a TLS proxy in front of the console talks plain http to it)
    secure_cookies: bool = False
    session_max_age_s: int = Field(8 * 3600, ge=60, le=30 * 86400)  # a sign-in lasts at most this long
    session_idle_s: int = Field(3600, ge=60, le=30 * 86400)  # ... and ends after this long without a request
    # sign-in throttle, per client: wrong passwords for one user name from one address, and from one address for
    # any user names, within login_window_s; a client over its budget gets 429, other clients are not affected
    login_max_failures: int = Field(5, ge=1, le=1000)
    login_max_failures_per_address: int = Field(20, ge=1, le=10000)
    login_window_s: float = Field(300.0, gt=0, le=86400)
    stow: "StowSettings" = Field(default_factory=lambda: StowSettings())  # STOW-RS in (node.web.stow)


class StowSettings(_Strict):
    """STOW-RS into the node (``POST /dicom-web/studies`` on the console's port, API tokens of role 'sender')."""

    enabled: bool = True
    max_part_bytes: int = Field(512 * 1024 ** 2, ge=1024 * 1024)  # one instance (held in memory while stored)
    max_request_bytes: int = Field(8 * 1024 ** 3, ge=1024 * 1024)  # one request's body (streamed)


class LoggingSettings(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    phi_in_logs: bool = False  # patient names and IDs are logged only when true (and only at DEBUG)


class QcThresholds(_Strict):
    """QC numbers beyond which a job is flagged 'suspicious' for a person to check."""

    max_folding_percent: float = 0.5
    max_sdlogj: float = 0.25
    min_similarity_gain: float = 0.0


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
               "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_size(value: int | float | str) -> int:
    """Bytes of a size given as a number of bytes or a string with a unit ("2 GB" = 2e9, "1.5GiB", "500 MB")."""
    if isinstance(value, (int, float)):
        return int(value)
    import re
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"'{value}' is not a size (bytes, or a number with B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


class RetentionSettings(_Strict):
    """What the node deletes and when (``retention:``; :mod:`node.retention`).

    Age limits in days (``null``: kept until the disk watermarks need the room). Watermarks: a number of bytes or a
    size string ("1.8 GB": the node's own data, spool + results, as the index counts it) or a percentage ("90%":
    of ``max_bytes`` when set, else of the spool's file system as ``df`` counts it). Above ``high_watermark`` the
    oldest eligible data goes until usage is at ``low_watermark``. Data a queued or running job, an undelivered
    send or a pending late-instance follow-up needs is never eligible."""

    enabled: bool = True
    tick_s: float = Field(60.0, gt=0)  # seconds between purge passes of `totalreg serve`
    received_studies_days: float | None = Field(None, ge=0)  # studies sent to the node
    retrieved_priors_days: float | None = Field(None, ge=0)  # priors the node fetched from a PACS
    job_results_days: float | None = Field(None, ge=0)  # <data_dir>/results/<job id>/ of finished jobs
    records_days: float | None = Field(None, ge=0)  # finished jobs' rows (runs, sends) and events, once their files went
    max_bytes: int | str | None = None  # total limit of spool + results, e.g. "2 GB"
    high_watermark: int | str = "90%"
    low_watermark: int | str = "80%"

    @field_validator("max_bytes", "high_watermark", "low_watermark")
    @classmethod
    def _size_or_percent(cls, v):
        if v is None:
            return v
        if isinstance(v, str) and v.strip().endswith("%"):
            pct = float(v.strip()[:-1])
            if not 0 < pct <= 100:
                raise ValueError(f"'{v}': a percentage must be in (0, 100]")
            return v.strip()
        return parse_size(v)

    @model_validator(mode="after")
    def _low_below_high(self) -> "RetentionSettings":
        if type(self.high_watermark) is type(self.low_watermark):
            hi, lo = self.high_watermark, self.low_watermark
            if isinstance(hi, str):
                hi, lo = float(hi[:-1]), float(lo[:-1])
            if lo > hi:
                raise ValueError("low_watermark must not be above high_watermark")
        return self


#: what a notification target can subscribe to (``events:``; ``job.*``, ``node.*`` and ``*`` match groups)
NOTIFY_EVENTS = ("job.registered", "job.no_prior", "job.suspicious", "job.failed", "job.dead",
                 "node.disk_low", "node.disk_ok", "node.pacs_unreachable", "node.pacs_reachable",
                 "node.receiver_down", "node.receiver_up")


class NotificationTarget(_Strict):
    """Where node events go (``notifications:``, a list): a webhook (HTTP POST of a signed JSON body, see
    :mod:`node.notify`) or an e-mail through an SMTP relay. No patient names or IDs unless ``include_phi``."""

    name: str = ""  # shown in the console; default: the URL's host or the e-mail address
    kind: Literal["webhook", "email"] = "webhook"
    url: str | None = None  # webhook: http(s)://...
    secret: str | None = None  # webhook: HMAC-SHA256 key of the X-TotalReg-Signature header
    events: list[str] = Field(default_factory=lambda: ["*"])  # names of NOTIFY_EVENTS, or 'job.*', 'node.*', '*'
    include_phi: bool = False  # patient name, ID, birth date, accession number in the body
    timeout_s: float = Field(10.0, gt=0, le=300)
    retry: RetrySettings = Field(default_factory=lambda: RetrySettings(max_attempts=10, backoff_s=10.0,
                                                                       max_backoff_s=3600.0))
    smtp_host: str | None = None  # email: the relay (no authentication, or smtp_user/smtp_password)
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_starttls: bool = False
    smtp_user: str | None = None
    smtp_password: str | None = None
    mail_from: str | None = None
    mail_to: list[str] = Field(default_factory=list)

    @field_validator("events")
    @classmethod
    def _known_events(cls, v: list[str]) -> list[str]:
        groups = {"*", "job.*", "node.*"}
        bad = [e for e in v if e not in NOTIFY_EVENTS and e not in groups]
        if bad:
            raise ValueError(f"unknown event {', '.join(bad)} (known: {', '.join(NOTIFY_EVENTS)}, job.*, node.*, *)")
        return v

    @model_validator(mode="after")
    def _kind_fields(self) -> "NotificationTarget":
        if self.kind == "webhook":
            if not self.url or not self.url.startswith(("http://", "https://")):
                raise ValueError("a webhook needs url: http(s)://...")
        elif not (self.smtp_host and self.mail_from and self.mail_to):
            raise ValueError("an email target needs smtp_host, mail_from and mail_to")
        if not self.name:
            from urllib.parse import urlsplit
            self.name = (urlsplit(self.url).netloc if self.kind == "webhook" else self.mail_to[0])[:128]
        return self

    def wants(self, event: str) -> bool:
        """True when this target subscribed to ``event`` (a name of :data:`NOTIFY_EVENTS`)."""
        return any(e == "*" or e == event or (e.endswith(".*") and event.startswith(e[:-1])) for e in self.events)


class AuditSettings(_Strict):
    """The audit trail (node.audit): optional forwarding to a syslog collector as DICOM/IHE ATNA messages
    (RFC 5424 over TCP; TLS with ``syslog_tls``, the collector verified against ``syslog_ca_file`` or the system
    store, a client certificate when ``syslog_cert_file``/``syslog_key_file`` are set)."""

    syslog_host: str | None = None  # not set: records stay in the database (console, totalreg audit export)
    syslog_port: int = Field(6514, ge=1, le=65535)
    syslog_tls: bool = True
    syslog_ca_file: Path | None = None
    syslog_cert_file: Path | None = None
    syslog_key_file: Path | None = None


def _default_destinations() -> list[DestinationConfig]:
    return [DestinationConfig(name="local", kind="folder", path=Path("./var/outbox"))]


def _default_rules() -> list[Rule]:
    return [Rule(name="ct-followup", send_to=["local"])]


class NodeConfig(_Strict):
    """The whole ``node.yaml``."""

    node: NodeSettings = Field(default_factory=NodeSettings)
    completion: CompletionSettings = Field(default_factory=CompletionSettings)
    pacs: list[PacsConfig] = Field(default_factory=list)
    destinations: list[DestinationConfig] = Field(default_factory=_default_destinations)
    send_retry: RetrySettings = Field(default_factory=RetrySettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    rules: list[Rule] = Field(default_factory=_default_rules)
    web: WebSettings = Field(default_factory=WebSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    qc: QcThresholds = Field(default_factory=QcThresholds)
    registration: NodeRegistrationSettings = Field(default_factory=NodeRegistrationSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    notifications: list[NotificationTarget] = Field(default_factory=list)
    audit: AuditSettings = Field(default_factory=AuditSettings)

    @model_validator(mode="after")
    def _references(self, info: ValidationInfo) -> "NodeConfig":
        if info.context and info.context.get("defer_references"):
            return self
        problems = self.reference_problems()
        if problems:
            raise ValueError(problems[0][1])
        return self

    def reference_problems(self) -> list[tuple[tuple[Any, ...], str]]:
        """Cross-references that do not resolve, as (key path, message): duplicate names, unknown send_to."""
        out: list[tuple[tuple[Any, ...], str]] = []
        for what, items in (("pacs", self.pacs), ("destinations", self.destinations), ("rules", self.rules),
                            ("notifications", self.notifications)):
            names = [i.name for i in items]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                out.append(((what,), f"duplicate name {', '.join(dup)}"))
        known = {d.name for d in self.destinations}
        for i, rule in enumerate(self.rules):
            for j, name in enumerate(rule.send_to):
                if name not in known:
                    out.append((("rules", i, "send_to", j),
                                f"rule '{rule.name}' sends to '{name}', which is not a destination "
                                f"(known: {', '.join(sorted(known)) or 'none'})"))
        return out

    def destination(self, name: str) -> DestinationConfig:
        """The destination called ``name`` (KeyError if none)."""
        for d in self.destinations:
            if d.name == name:
                return d
        raise KeyError(name)


# --------------------------------------------------------------------------------------------------------- loading

def _node_at(root: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    """The YAML node at a pydantic error location (keys and list indices), or the deepest one found."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for key_node, value_node in node.value:
                if key_node.value == part:
                    nxt = value_node
                    break
            if nxt is None:
                return node
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return node
    return node


def _key_node(root: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    """For an 'extra key' error the key node itself carries the best line number."""
    parent = _node_at(root, loc[:-1])
    if isinstance(parent, yaml.MappingNode):
        for key_node, _ in parent.value:
            if key_node.value == loc[-1]:
                return key_node
    return None


def _loc_text(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _format_errors(exc: ValidationError, root: yaml.Node | None, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        node = _key_node(root, loc) if err["type"] == "extra_forbidden" else _node_at(root, loc)
        where = f"{source} line {node.start_mark.line + 1}" if node is not None else source
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{where} ({_loc_text(loc)}): {msg}")
    return "\n".join(lines)


def parse_config(text: str, source: str = "node.yaml") -> NodeConfig:
    """Parse and validate YAML text; raise ConfigError naming the line and key of every problem."""
    try:
        root = yaml.compose(text) if text.strip() else None
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source} line {mark.line + 1}" if mark else source
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections (node, rules, ...)")
    try:
        cfg = NodeConfig.model_validate(data, context={"defer_references": True})
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, root, source)) from None
    problems = cfg.reference_problems()
    if problems:
        lines = []
        for loc, msg in problems:
            node = _node_at(root, loc)
            where = f"{source} line {node.start_mark.line + 1}" if node is not None else source
            lines.append(f"{where} ({_loc_text(loc)}): {msg}")
        raise ConfigError("\n".join(lines))
    return cfg


def parse_rules(text: str, source: str = "rules") -> list[Rule]:
    """Validate a YAML list of rules (as edited in the console); ConfigError names line and key."""
    try:
        root = yaml.compose(text) if text.strip() else None
        data = yaml.safe_load(text) if text.strip() else []
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source} line {mark.line + 1}" if mark else source
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = []
    if not isinstance(data, list):
        raise ConfigError(f"{source} line 1: rules must be a list (each item starts with '- name: ...')")
    errors: list[str] = []
    rules: list[Rule] = []
    for i, item in enumerate(data):
        try:
            rules.append(Rule.model_validate(item, context={}))
        except ValidationError as exc:
            msg = _format_errors(exc, root.value[i] if isinstance(root, yaml.SequenceNode) else None, source)
            errors.extend(line.replace("(", f"(rules[{i}].", 1) for line in msg.splitlines())
    if errors:
        raise ConfigError("\n".join(errors))
    return rules


def load_config(path: str | Path | None) -> NodeConfig:
    """Load ``node.yaml`` (None: embedded defaults). Relative paths stay relative to the working directory."""
    if path is None:
        return NodeConfig()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {p}: {exc.strerror or exc}") from None
    return parse_config(text, source=p.name)


def dump_config(cfg: NodeConfig) -> str:
    """The configuration as YAML (defaults included), for `totalreg config --show` and the console."""
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), sort_keys=False)
