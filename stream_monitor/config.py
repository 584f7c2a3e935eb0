"""The monitor's configuration: one YAML file validated into frozen objects.

``load_config(path)`` reads the file, merges ``defaults`` into every model (a model overrides only the keys it
names), validates everything and raises :class:`ConfigError` whose message names the bad key, for example
``models.loan.window.size: must be greater than 0``. Unknown keys are errors too: a typo never silently falls
back to a default. ``config/example.yaml`` documents every key.
"""

from __future__ import annotations

import copy
import difflib
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "AlertsConfig",
    "ConfigError",
    "DriftConfig",
    "EventsConfig",
    "INTERNAL_TOPICS",
    "KafkaConfig",
    "ModelConfig",
    "MonitorConfig",
    "ReferenceConfig",
    "SegmentsConfig",
    "TopicsConfig",
    "WindowConfig",
    "load_config",
    "parse_config",
]


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


#: librdkafka properties that say where and how to connect: they belong in ``kafka.connection`` (shared by
#: every client), never in one role's section only.
CONNECTION_PREFIXES = ("security.protocol", "sasl.", "ssl.", "ssl_", "enable.ssl", "bootstrap.servers")

#: librdkafka properties whose values never reach a log line or an error message.
SECRET_KEYS = ("sasl.password", "ssl.key.password", "ssl.keystore.password", "ssl.key.pem",
               "ssl_key", "sasl.oauthbearer.client.secret", "sasl.oauthbearer.config",
               "sasl.oauthbearer.extensions", "sasl.kerberos.keytab")


class KafkaConfig(_Frozen):
    bootstrap_servers: str | None = None  # overridden by --bootstrap-servers, then KAFKA_BOOTSTRAP_SERVERS
    group_id: str = "stream-monitor"
    # Connection and security properties (security.protocol, sasl.*, ssl.*), merged into every client the
    # monitor and its commands build: consumers, producers, admin clients, compacted-topic readers, routers.
    connection: dict[str, Any] = Field(default_factory=dict)
    connect_timeout_s: float = Field(30, gt=0, le=600)  # give up with one clear line when Kafka cannot be reached
    # State, outputs and offsets are committed together in one Kafka transaction every commit_interval_s.
    commit_interval_s: float = Field(1.0, gt=0, le=60)
    # Stable name of this instance (e.g. the pod name of a StatefulSet): its transactional.id. A restarted
    # instance with the same name fences its previous incarnation at once; without one, a crashed instance's
    # open transaction holds its partitions until transaction_timeout_s passes.
    instance_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
    transaction_timeout_s: float = Field(60, ge=1, le=900)

    @model_validator(mode="after")
    def _connection_settings_are_shared(self) -> KafkaConfig:
        for role in ("consumer", "producer"):
            for key in getattr(self, role):
                if key.startswith(CONNECTION_PREFIXES):
                    raise ValueError(f"{role}.{key}: connection and security settings go under kafka.connection, "
                                     "which every client uses (admin, readers and the CLI too)")
        for key, value in self.connection.items():
            if not isinstance(value, (str, int, float, bool)):
                raise ValueError(f"connection.{key}: expected a string, number or boolean")
        return self
    consumer: dict[str, Any] = Field(default_factory=dict)  # extra librdkafka consumer settings
    producer: dict[str, Any] = Field(default_factory=dict)  # extra librdkafka producer settings


#: Topics only the monitor itself reads back (its state and its instances' traffic). Unless configured, each
#: is named ``<kafka.group_id>.<role>`` by :class:`MonitorConfig`, as Kafka Streams names its internal topics
#: after its application.id: two deployments (two groups) on one cluster never read each other's state. The
#: defaults below are the names for the default group id, ``stream-monitor``.
INTERNAL_TOPICS = ("state", "join", "panes", "references")

#: What Kafka accepts as a topic name.
TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class TopicsConfig(_Frozen):
    predictions: str = "predictions"
    labels: str = "labels"
    alerts: str = "stream-monitor.alerts"
    breaker: str = "stream-monitor.breaker"
    dead_letter: str = "stream-monitor.dead-letter"
    # internal (INTERNAL_TOPICS): unless set, named after kafka.group_id when the MonitorConfig is validated
    state: str = "stream-monitor.state"  # compacted: references and alert state, restored after a restart
    metrics: str = "stream-monitor.metrics"  # window reports: drift statistics, performance, coverage, latency
    join: str = "stream-monitor.join"  # compacted changelog of the label join's pending entries
    # scale-out mode only: partial panes from the instances reading predictions to the one deciding per model
    panes: str = "stream-monitor.panes"
    references: str = "stream-monitor.references"  # scale-out mode: warm-up references (compacted)
    partitions: int = Field(3, gt=0)  # for the topics the monitor creates
    replication_factor: int = Field(1, gt=0)

    def for_group(self, group_id: str) -> TopicsConfig:
        """These topics with every internal topic that was not configured named after ``group_id``.

        The result remembers which names were configured (its ``model_fields_set`` is this one's), so resolving
        it again for another group renames the derived ones too."""
        derived = {role: f"{group_id}.{role}" for role in INTERNAL_TOPICS if role not in self.model_fields_set}
        bad = [role for role, name in derived.items() if not TOPIC_NAME.match(name)]
        if bad:
            raise ValueError(f"topics.{bad[0]}: kafka.group_id {group_id!r} gives no valid topic name "
                             f"({derived[bad[0]]!r}): set {', '.join(f'topics.{r}' for r in bad)}, or use a group "
                             "id of at most 240 letters, digits, '.', '_' and '-'")
        if not derived:
            return self
        return TopicsConfig.model_construct(_fields_set=set(self.model_fields_set), **{**dict(self), **derived})


class EventsConfig(_Frozen):
    """Checks on input events beyond their contract: implausible event times and oversized messages or strings
    are dead-lettered (docs/events.md)."""

    max_future_s: float = Field(86400, gt=0)  # event times further ahead of wall-clock time are rejected
    min_timestamp: float = Field(946684800, ge=0)  # epoch seconds; earlier event times are rejected (2000-01-01)
    unknown_models: Literal["count", "dead_letter"] = "count"  # events of models not in the config
    # larger messages are dead-lettered unread (class too_large); the broker's message.max.bytes bounds them too
    max_message_bytes: int = Field(1 << 20, ge=1024, le=1 << 30)
    # strings the monitor keeps (ids, model, version, classes, labels, segments, categorical values): longer
    # ones are dead-lettered (class string_too_long); see docs/events.md
    max_string_length: int = Field(1024, ge=64, le=1 << 20)


class BatchConfig(_Frozen):
    max_messages: int = Field(20000, gt=0)
    timeout_s: float = Field(0.5, gt=0)
    # parse the next batch on a second thread while the core works on this one (the compiled decoder parses
    # without the GIL): for a monitor with a spare CPU; on a machine whose CPUs the broker keeps busy it is
    # slower (see docs/benchmarks.md)
    decode_ahead: bool = False


class WindowConfig(_Frozen):
    """What one evaluated window is."""

    type: Literal["tumbling", "sliding"] = "tumbling"
    by: Literal["count", "time"] = "count"
    size: float = Field(1000, gt=0)  # events (by: count) or seconds of event time (by: time)
    slide: float | None = Field(None, gt=0)  # sliding only: events or seconds between evaluations
    lateness_s: float = Field(0.0, ge=0)  # time windows: how late an event may arrive and still count; scale-out count windows: how far out of order

    @model_validator(mode="after")
    def _check(self) -> WindowConfig:
        if self.type == "sliding":
            if self.slide is None:
                raise ValueError("slide: required for a sliding window")
            if self.slide > self.size:
                raise ValueError("slide: must not exceed size")
            ratio = self.size / self.slide
            if abs(ratio - round(ratio)) > 1e-9:
                raise ValueError("slide: size must be a whole multiple of slide")
        elif self.slide is not None:
            raise ValueError("slide: only for type: sliding")
        if self.by == "count" and (self.size != int(self.size) or (self.slide or 1) != int(self.slide or 1)):
            raise ValueError("size: a count window's size and slide are whole numbers of events")
        return self

    @property
    def pane(self) -> float:
        return self.slide if self.type == "sliding" and self.slide else self.size


class ReferenceConfig(_Frozen):
    """What the window is compared with.

    - ``file``: an artifact built by ``stream-monitor reference build`` (``path``).
    - ``warmup``: the model's first ``size`` events.
    - ``rolling``: the previous ``windows`` windows (bins fixed by the warm-up).
    - ``calendar``: the same slot (``slot_s`` seconds, default one hour) of the previous ``periods``
      cycles of ``period_s`` (default one week), so a weekly pattern is not drift.
    """

    type: Literal["file", "warmup", "rolling", "calendar"] = "warmup"
    path: str | None = None
    size: int = Field(5000, gt=0)
    windows: int = Field(1, gt=0)
    period_s: float = Field(7 * 86400, gt=0)
    slot_s: float = Field(3600, gt=0)
    periods: int = Field(4, gt=0)
    min_events: int = Field(200, gt=0)  # a rolling/calendar reference with fewer events is not used
    store_dir: str | None = None  # where warm-up references are saved as artifacts (None: not saved)

    @model_validator(mode="after")
    def _check(self) -> ReferenceConfig:
        if self.type == "file" and not self.path:
            raise ValueError("path: required for reference type 'file'")
        ratio = self.period_s / self.slot_s
        if self.type == "calendar" and abs(ratio - round(ratio)) > 1e-9:
            raise ValueError("slot_s: period_s must be a whole multiple of slot_s")
        return self


class Thresholds(_Frozen):
    """Smallest effect worth an alert, per statistic (the p-value and the size-aware noise floor decide too).

    Chosen from ``bench/detection.py``: a 0.1 sd mean shift is a PSI of ~0.01, a 0.2 sd one ~0.04, and an
    |AUC - 0.5| of ~0.025 on ten bins (``rank_sum`` 0.02 is a shift of ~0.08 sd, as PSI's 0.008 is ~0.09 sd).
    ``rank_sum`` and ``category_shift`` set to null turn those tests off."""

    psi: float = Field(0.008, gt=0)
    ks: float = Field(0.05, gt=0, le=1)
    wasserstein: float = Field(0.1, gt=0)
    js: float = Field(0.05, gt=0, le=1)
    hellinger: float = Field(0.05, gt=0, le=1)
    chi2: float = Field(0.05, gt=0)  # Cohen's w
    # |AUC - 0.5| of the binned rank-sum (Mann-Whitney) location test on numeric features; null: not tested
    rank_sum: float | None = Field(0.02, gt=0, le=0.5)
    # largest significant change of one category's share (categorical features); null: not tested
    category_shift: float | None = Field(0.01, gt=0, le=1)


NumericTest = Literal["auto", "psi", "ks", "wasserstein", "js", "hellinger"]
CategoricalTest = Literal["chi2", "psi", "js", "hellinger"]


class DriftConfig(_Frozen):
    bins: int = Field(10, ge=2, le=100)  # numeric bins from the reference's quantiles
    numeric_test: NumericTest = "auto"  # auto: psi, or ks when the window is small for its bins
    categorical_test: CategoricalTest = "chi2"
    thresholds: Thresholds = Thresholds()
    family_alpha: float = Field(0.01, gt=0, lt=1)  # Holm correction across a model's features per window
    sample_size: int = Field(5000, ge=50)  # exact samples kept per window for KS/Wasserstein
    # statistics that do not decide a feature (JS, Hellinger, the other binned test; KS and Wasserstein on the
    # exact samples) are computed for the features over threshold; true computes every statistic for every
    # feature of every window report (slower: see docs/benchmarks.md). Decisions are the same.
    report_all_statistics: bool = False
    # Evidence across windows (file and warm-up references): each window's binned decision statistic is also
    # computed on its last 4 and 16 windows together, so a small shift that persists is caught (see docs/reference.md)
    evidence_windows: tuple[int, ...] = (4, 16)
    max_categories: int = Field(50, ge=1)  # tracked categories per feature; the rest count as "other"
    max_known_categories: int = Field(10000, ge=1)  # remembered for the new-category rate
    min_window_events: int = Field(100, gt=0)  # windows with fewer events are not evaluated
    new_category_rate: float = Field(0.01, gt=0, le=1)
    new_category_min_count: int = Field(5, ge=1)  # fewer never-seen values in a window never alert
    missing_rate_increase: float = Field(0.05, gt=0, le=1)
    type_error_rate: float = Field(0.01, gt=0, le=1)
    out_of_range_rate: float = Field(0.05, gt=0, le=1)

    @model_validator(mode="after")
    def _check_evidence(self) -> DriftConfig:
        spans = self.evidence_windows
        if any(s < 2 or s > 256 for s in spans) or len(set(spans)) != len(spans):
            raise ValueError(f"evidence_windows: distinct window counts between 2 and 256 expected, got {list(spans)}")
        return self


class SegmentsConfig(_Frozen):
    """Drift per slice: for each of ``keys`` (fields of the events' ``segment`` object), the ``top_n`` values
    with the most reference events are monitored as slices, each against its own part of the reference, in the
    same Holm family as the model's features. No keys (the default): no slices, no cost."""

    keys: tuple[str, ...] = ()
    top_n: int = Field(5, ge=1, le=50)  # slices per key: the values with the most reference events
    # a slice whose part of the reference has fewer events is reported, not evaluated: comparing it with the
    # whole population would flag slices that are merely different, not changed
    min_reference_events: int = Field(200, ge=20)
    min_window_events: int = Field(100, gt=0)  # a slice's window with fewer events is not evaluated

    @field_validator("keys")
    @classmethod
    def _keys(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, key in enumerate(v):
            if not key or key.strip() != key:
                raise ValueError(f"{i}: a segment key is a non-empty name without surrounding spaces, got {key!r}")
            if key in v[:i]:
                raise ValueError(f"{i}: segment key {key!r} is listed twice")
        return v

    @property
    def enabled(self) -> bool:
        return bool(self.keys)


class FeaturesConfig(_Frozen):
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> FeaturesConfig:
        for kind, names in (("numeric", self.numeric), ("categorical", self.categorical)):
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"{kind} lists a feature more than once: {twice}")
        both = set(self.numeric) & set(self.categorical)
        if both:
            raise ValueError(f"features listed as both numeric and categorical: {sorted(both)}")
        return self


Severity = Literal["info", "warning", "critical"]
AlertKind = Literal["data_drift", "data_quality", "prediction_drift", "concept_drift", "performance", "latency",
                    "label_coverage"]


class BreakerRule(_Frozen):
    """The breaker opens when this holds for ``windows`` consecutive windows."""

    kinds: tuple[AlertKind, ...] = ("performance",)  # alert kinds that count
    severity: Severity = "critical"  # minimum severity of a counted alert
    features: tuple[str, ...] = ()  # only these (important) features count; empty: any feature
    min_features: int = Field(1, ge=1)  # at least this many distinct features (or conditions) firing
    windows: int = Field(2, ge=1)


class BreakerConfig(_Frozen):
    """Circuit breaker: closed (primary serves) -> open (fallback serves) -> half_open (probe) -> closed."""

    enabled: bool = False
    primary_version: str = ""
    fallback_version: str = ""
    rules: tuple[BreakerRule, ...] = (BreakerRule(),)
    hold_down_s: float = Field(600, ge=0)  # event time spent open before probing the primary
    probe_share: float = Field(0.1, gt=0, lt=1)  # traffic to the primary while half-open
    close_after: int = Field(3, ge=1)  # healthy windows in half-open before closing

    @model_validator(mode="after")
    def _check(self) -> BreakerConfig:
        if self.enabled and not (self.primary_version and self.fallback_version):
            raise ValueError("primary_version: an enabled breaker needs primary_version and fallback_version")
        return self


MetricName = Literal["accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "mae", "rmse"]


class Bound(_Frozen):
    min: float | None = None  # alert when the metric falls below
    max: float | None = None  # alert when the metric rises above

    @model_validator(mode="after")
    def _check(self) -> Bound:
        if self.min is None and self.max is None:
            raise ValueError("min: give min, max or both")
        return self


class PerformanceConfig(_Frozen):
    """Realized performance on joined labels, per window of prediction time, reported once mature."""

    task: Literal["none", "binary", "multiclass", "regression"] = "none"
    positive_label: str | int | float | bool | None = None  # binary: the positive class (score is its probability)
    window_s: float = Field(3600, gt=0)  # windows over prediction event time
    maturity_s: float = Field(0, ge=0)  # report a window this long after its end, when its labels have landed
    min_labels: int = Field(30, ge=1)  # fewer joined pairs: metrics are not computed ("insufficient labels")
    # A bound is crossed only when the metric's confidence interval lies wholly beyond it: a window of 50
    # labels at 0.62 accuracy is not evidence of accuracy under 0.65.
    confidence: float = Field(0.99, gt=0.5, lt=1)
    min_coverage: float | None = Field(None, gt=0, le=1)  # label_coverage alert below this share
    thresholds: dict[MetricName, Bound] = Field(default_factory=dict)  # e.g. {accuracy: {min: 0.85}}
    estimate: bool = True  # binary with score: confidence-based estimate of accuracy/F1 while labels lag
    calibration_pairs: int = Field(5000, ge=0)  # first labeled pairs that calibrate the estimate's scores
    max_pairs: int = Field(10_000, ge=100)  # pairs sampled per window for ROC AUC and lag percentiles

    @model_validator(mode="after")
    def _check(self) -> PerformanceConfig:
        if self.task == "binary" and self.positive_label is None:
            raise ValueError("positive_label: required for task 'binary'")
        regression = {"mae", "rmse"}
        for m in self.thresholds:
            if (self.task == "regression") != (m in regression):
                raise ValueError(f"thresholds: metric '{m}' does not apply to task '{self.task}'")
        return self


class JoinConfig(_Frozen):
    """Bounded store that joins labels to predictions on event_id, whichever arrives first."""

    ttl_s: float = Field(30 * 86400, gt=0)  # event time a prediction (or early label) waits for its partner
    max_pending: int = Field(1_000_000, ge=1)  # unjoined predictions + labels kept; oldest evicted beyond
    max_joined_ids: int = Field(1_000_000, ge=1)  # recently joined ids remembered to ignore duplicate labels
    # Windows mature on the slower of the two streams' event time (so a consumer catching up on one topic
    # does not report windows before the other topic's labels are read), but never wait more than this.
    label_stall_s: float = Field(86400, ge=0)
    # Share of events joined, chosen by the key of event_id (the same events on both sides and in every
    # instance): pending entries = prediction rate x label delay x sample_rate.
    sample_rate: float = Field(1.0, gt=0, le=1)


class DetectorConfig(_Frozen):
    """A river concept-drift detector on the stream of joined pairs (0/1 error, or absolute error)."""

    type: Literal["adwin", "ddm", "eddm", "hddm_a", "hddm_w", "page_hinkley", "kswin"]
    params: dict[str, Any] = Field(default_factory=dict)  # passed to the river constructor
    page_warnings: bool = False  # warnings are in the window report; only drifts page unless this is set


class LatencyConfig(_Frozen):
    sla_p99_ms: float | None = Field(None, gt=0)  # alert when a window's p99 latency_ms exceeds this
    windows: int = Field(3, ge=1)  # ... for this many consecutive windows


#: Model names end up in Kafka keys, alert dedup keys and metric labels: no "/" or spaces.
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$"


class ModelConfig(_Frozen):
    name: str = Field(pattern=MODEL_NAME)
    features: FeaturesConfig
    prediction: Literal["categorical", "numeric", "none"] = "categorical"  # monitored as prediction drift
    monitor_score: bool = True
    window: WindowConfig = WindowConfig()
    reference: ReferenceConfig = ReferenceConfig()
    drift: DriftConfig = DriftConfig()
    sample_rate: float = Field(1.0, gt=0, le=1)  # share of events monitored; cited in every alert
    breaker: BreakerConfig = BreakerConfig()
    performance: PerformanceConfig = PerformanceConfig()
    join: JoinConfig = JoinConfig()
    concept_drift: tuple[DetectorConfig, ...] = ()
    latency: LatencyConfig = LatencyConfig()
    segments: SegmentsConfig = SegmentsConfig()

    @property
    def uses_labels(self) -> bool:
        """Whether label events of this model are joined (performance or concept drift configured)."""
        return self.performance.task != "none" or bool(self.concept_drift)

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if not self.features.numeric and not self.features.categorical:
            raise ValueError("features: list at least one numeric or categorical feature")
        known = [*self.features.numeric, *self.features.categorical, "prediction", "score"]
        for i, rule in enumerate(self.breaker.rules):
            for f in rule.features:
                if f not in known:
                    raise ValueError(f"breaker.rules.{i}.features: {f!r} is not a feature of this model"
                                     + _did_you_mean(f, known) + " (a rule on it could never hold)")
        if self.segments.enabled and self.reference.type not in ("file", "warmup"):
            raise ValueError(f"segments: slices need reference type 'file' or 'warmup' (each slice is compared "
                             f"with its own part of the reference), not {self.reference.type!r}")
        return self


def _default_severity() -> dict[str, str]:
    return {"data_drift": "warning", "prediction_drift": "warning", "data_quality": "warning",
            "concept_drift": "warning", "performance": "critical", "latency": "critical",
            "label_coverage": "warning"}


class AlertsConfig(_Frozen):
    runbook_url: str = "https://github.com/stream-monitor/stream-monitor/blob/main/README.md#runbook-{kind}"
    consecutive: int = Field(2, gt=0)  # windows over threshold before an alert fires
    resolve_after: int = Field(2, gt=0)  # windows back under threshold before it resolves
    repeat_every: int = Field(0, ge=0)  # re-send a firing alert every N windows (0: never)
    critical_factor: float = Field(4, ge=1)  # value >= factor * threshold escalates to critical
    severity: dict[AlertKind, Severity] = Field(default_factory=_default_severity)  # base severity per kind
    cooldown_s: float = Field(0, ge=0)  # after resolving, the same alert cannot fire again this soon (event time)
    group: bool = True  # one alert per model, kind and window, listing the features
    inhibit: bool = True  # a data-quality alert on a feature mutes its drift; an open breaker mutes repeats

    @field_validator("severity")
    @classmethod
    def _all_kinds(cls, v: dict[str, str]) -> dict[str, str]:
        return {**_default_severity(), **v}


class PrometheusConfig(_Frozen):
    port: int | None = Field(9108, ge=0, le=65535)  # /metrics for Prometheus; null: no endpoint
    host: str = "0.0.0.0"
    # the most (model, feature, kind, statistic) label sets of stream_monitor_drift_statistic and _threshold; the
    # ones first seen past it are not exported and count in stream_monitor_metric_series_dropped_total (a fleet
    # of 300 models x 10 features x 6 statistics would be 36,000 series); 0: no per-feature series
    max_feature_series: int = Field(5000, ge=0)


class ScaleOutConfig(_Frozen):
    """One model's stream over many partitions and instances, monitored as one (see docs/scale-out.md).

    The instances that read a model's prediction partitions build partial panes and publish them to
    ``topics.panes`` keyed by model; the instance that owns the model's key there merges them into windows and
    makes every decision (alerts, breaker, reports) for it.
    """

    enabled: bool = False
    # A prediction partition that has sent no pane of a model for this long (by the panes' produce times)
    # no longer holds that model's time windows back; its events in windows already closed are counted late.
    idle_partition_s: float = Field(30, gt=0)
    # Count windows: the most events of one model the deciding instance holds while a partition lags behind the
    # others (they wait for the merge order, in its state). Past it the oldest are released out of that order
    # (counted and logged once): memory stays bounded while an instance is down or far behind.
    max_waiting_events: int = Field(1_000_000, ge=1000)


class MonitorConfig(_Frozen):
    kafka: KafkaConfig = KafkaConfig()
    prometheus: PrometheusConfig = PrometheusConfig()
    topics: TopicsConfig = TopicsConfig()
    batch: BatchConfig = BatchConfig()
    events: EventsConfig = EventsConfig()
    alerts: AlertsConfig = AlertsConfig()
    scale_out: ScaleOutConfig = ScaleOutConfig()
    models: dict[str, ModelConfig]

    @field_validator("models")
    @classmethod
    def _non_empty(cls, v: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
        if not v:
            raise ValueError("configure at least one model")
        return v

    @model_validator(mode="after")
    def _internal_topics_of_this_group(self) -> MonitorConfig:
        # Every reader of cfg.topics.state (the runner, the CLI, the tests) sees the resolved name. The object
        # is frozen; this is its construction. Hazard: model_copy(update={"kafka": ...}) does not validate, so a
        # copy with another group keeps these names; copy with topics=cfg.topics.for_group(new_group) too.
        object.__setattr__(self, "topics", self.topics.for_group(self.kafka.group_id))
        return self


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _did_you_mean(word: str, choices: Any) -> str:
    hint = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the config object at ``loc`` (a path of keys from the top), for "did you mean" hints."""
    cls: Any = MonitorConfig
    path = list(loc)
    while path:
        key = path.pop(0)
        field = cls.model_fields.get(key) if isinstance(cls, type) and issubclass(cls, BaseModel) else None
        if field is None:
            return []
        ann = field.annotation
        args = typing.get_args(ann)
        if typing.get_origin(ann) is dict and args and isinstance(args[1], type) and issubclass(args[1], BaseModel):
            if not path:
                return []
            path.pop(0)  # the dict key (a model name)
            cls = args[1]
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            cls = ann
        else:
            return []
    return list(cls.model_fields) if isinstance(cls, type) and issubclass(cls, BaseModel) else []


def _format(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden" and e["loc"]:
            parent = tuple(p for p in e["loc"][:-1] if not str(p).startswith("function-after"))
            msg = "unknown key" + _did_you_mean(str(e["loc"][-1]), [f for f in _fields_at(parent) if f != "name"])
        if ": " in msg and not msg.startswith(("Input", "Field")):
            key, _, rest = msg.partition(": ")  # our own validators name the sub-key first
            if " " not in key:
                loc, msg = f"{loc}.{key}" if loc else key, rest
        lines.append(f"{source}: {loc or '(top level)'}: {msg}")
    return "\n".join(lines)


def parse_config(raw: Any, source: str = "config") -> MonitorConfig:
    """Validate an already-parsed YAML document (see :func:`load_config`)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping, got {type(raw).__name__}")
    raw = dict(raw)
    defaults = raw.pop("defaults", None) or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{source}: defaults: expected a mapping")
    models = raw.get("models")
    if isinstance(models, dict):
        merged = {}
        for name, spec in models.items():
            if not isinstance(spec, dict):
                raise ConfigError(f"{source}: models.{name}: expected a mapping")
            merged[name] = _deep_merge(defaults, {**spec, "name": name})
        raw["models"] = merged
    try:
        return MonitorConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format(exc, source)) from None


def load_config(path: str | Path) -> MonitorConfig:
    """Read and validate a YAML config file; relative reference paths are taken from the file's folder."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if isinstance(raw, dict) and isinstance(raw.get("models"), dict):
        for spec in raw["models"].values():
            ref = spec.get("reference") if isinstance(spec, dict) else None
            if isinstance(ref, dict) and isinstance(ref.get("path"), str) and not Path(ref["path"]).is_absolute():
                ref["path"] = str((p.parent / ref["path"]).resolve())
    return parse_config(raw, str(p))
