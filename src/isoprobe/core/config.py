"""Typed, validated params: read params.yaml once, pass the objects down.

Every stage calls `load_params` first; a bad file stops with one message that names the key path,
the value and what is allowed (`IsoprobeError`, exit code 2), before anything is written.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from isoprobe.core import treatments
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.layout import SPLITS  # noqa: F401 (re-exported: the stages import it from here)
from isoprobe.core.treatments import (  # noqa: F401 (the built-in options models, re-exported)
    BUILTIN_METHODS,
    BatchNormOptions,
    IsoBNOptions,
    LayerNormOptions,
    WhitenOptions,
    treatment_names,
)

SOURCE_SCHEMES = ("embedded", "glue_tsv", "hf", "trec", "conllu", "csv", "tsv")
EMBEDDED_SOURCES = ("tweets",)
TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Reasons a data row can be bad; each is dropped (counted in meta.json) or fatal, per `invalid_rows`.
ROW_REASONS = (
    "bad_field_count",  # a CSV/TSV line with more or fewer fields than the header (quoting)
    "malformed_line",  # a line a source's own format cannot parse
    "undecodable",  # bytes not valid in the task's `encoding` (sources without a known fallback)
    "empty_text",  # empty or whitespace-only text
    "missing_label",  # empty, NaN, none or null label
    "unknown_label",  # a label outside the task's label set
    "duplicate",  # the same text again (with `dedupe`): the first is kept
    "conflicting_label",  # the same text with different labels (with `dedupe`): every copy
    "leakage",  # a dev/test row whose text is also in train
)
Policy = Literal["drop", "fail"]
# A seed of NumPy's legacy RNG, scikit-learn and torch alike (tasks derive seed + 1 ... seed + 4).
SEED_MAX = 2**31 - 1
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(Strict):
    name: str = Field("embedded:all-MiniLM-L6-v2", min_length=1)
    revision: str | None = None


class SplitFractions(Strict):
    """Shares carved out of the pool when a source has no (labelled) split of that name."""

    dev: float = Field(0.1, gt=0, lt=1)
    test: float = Field(0.1, gt=0, lt=1)

    @model_validator(mode="after")
    def _room_for_train(self) -> SplitFractions:
        if self.dev + self.test >= 1:
            raise ValueError(
                f"dev + test must be < 1 to leave rows for train (got {self.dev} + {self.test})"
            )
        return self


class HfSplits(Strict):
    """Which split of a Hugging Face dataset becomes train / dev / test; null: the default rule
    (train; validation, dev, valid or validation_matched; test or test_matched)."""

    train: str | None = Field(None, min_length=1)
    dev: str | None = Field(None, min_length=1)
    test: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> HfSplits:
        named = [v for v in (self.train, self.dev, self.test) if v is not None]
        if len(set(named)) != len(named):
            raise ValueError(f"train, dev and test must name different splits (got {named})")
        return self


class MaxRows(Strict):
    """Upper bound on rows per split after a stratified, seeded subsample; null keeps every row."""

    train: int | None = Field(None, ge=1)
    dev: int | None = Field(None, ge=1)
    test: int | None = Field(None, ge=1)


class TaskConfig(Strict):
    """One labelled data set. Unset columns, label type and labels take the source's own defaults."""

    source: str
    text_columns: list[str] | None = Field(None, min_length=1, max_length=2)
    label_column: str | None = None
    label_type: Literal["classification", "regression"] | None = None
    labels: list[str] | None = Field(None, min_length=2)
    granularity: Literal["coarse", "fine"] = "coarse"
    encoding: str = "utf-8"
    split: SplitFractions = SplitFractions()
    max_rows: MaxRows = MaxRows()
    dedupe: bool = True
    # what to do with bad rows: one policy for every reason, or a mapping reason -> policy
    # (`default` for the reasons not named), e.g. {default: drop, leakage: fail}
    invalid_rows: Policy | dict[str, Policy] = "drop"
    metric: Literal["accuracy", "mcc", "f1", "correlation"] | None = None
    hf_splits: HfSplits | None = None  # hf: sources only
    seed: Seed = 0

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        scheme, sep, arg = v.partition(":")
        if not sep or not arg:
            raise ValueError(
                f"expected '<scheme>:<argument>' with scheme one of {', '.join(SOURCE_SCHEMES)}"
            )
        if scheme not in SOURCE_SCHEMES:
            raise ValueError(
                f"unknown source scheme '{scheme}'; allowed: {', '.join(SOURCE_SCHEMES)}"
            )
        if scheme == "embedded" and arg not in EMBEDDED_SOURCES:
            raise ValueError(
                f"unknown embedded source '{arg}'; allowed: {', '.join(EMBEDDED_SOURCES)}"
            )
        return v

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        import codecs

        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(
                f"unknown text encoding '{v}' (Python codec names: utf-8, latin-1, cp1252, ...)"
            ) from None
        return v

    @field_validator("text_columns")
    @classmethod
    def _distinct_columns(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("text columns must be different columns")
        return v

    @model_validator(mode="after")
    def _label_not_a_text_column(self) -> TaskConfig:
        if self.label_column and self.text_columns and self.label_column in self.text_columns:
            raise ValueError(
                f"label_column '{self.label_column}' is also one of text_columns {self.text_columns}"
            )
        return self

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("labels must be unique")
        return v

    @field_validator("invalid_rows")
    @classmethod
    def _known_reasons(cls, v: str | dict[str, str]) -> str | dict[str, str]:
        if isinstance(v, dict):
            unknown = sorted(set(v) - {"default", *ROW_REASONS})
            if unknown:
                raise ValueError(
                    f"unknown reason(s) {unknown}; allowed: default, {', '.join(ROW_REASONS)}"
                )
        return v

    @model_validator(mode="after")
    def _hf_splits_for_hf(self) -> TaskConfig:
        if self.hf_splits is not None and self.scheme != "hf":
            raise ValueError(f"hf_splits applies to hf: sources only (source is '{self.source}')")
        return self

    def policy(self, reason: str) -> str:
        """'drop' or 'fail' for one of ROW_REASONS."""
        if isinstance(self.invalid_rows, str):
            return self.invalid_rows
        return self.invalid_rows.get(reason, self.invalid_rows.get("default", "drop"))

    @property
    def scheme(self) -> str:
        return self.source.partition(":")[0]

    @property
    def argument(self) -> str:
        return self.source.partition(":")[2]


class PipelineConfig(Strict):
    tasks: list[str] = Field(..., min_length=1)

    @field_validator("tasks")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("task names must be unique")
        return v


class EmbedConfig(Strict):
    batch_size: int = Field(64, ge=1)
    max_length: int = Field(128, ge=4, le=8192)
    word_max_length: int = Field(256, ge=4, le=8192)
    dtype: Literal["float32", "float16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = Field(0, ge=0)


class IsotropyConfig(Strict):
    split: Literal["train", "dev", "test"] = "train"
    top_k: list[int] = Field([1, 5, 10], min_length=1)
    corr_threshold: float = Field(0.5, gt=0, lt=1)
    heatmap_dims: int = Field(32, ge=2, le=512)

    @field_validator("top_k")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v) or len(set(v)) != len(v):
            raise ValueError("top_k must be distinct integers >= 1")
        return sorted(v)


class TrainConfig(Strict):
    """Fine-tuning hyper-parameters shared by every (task, method, seed)."""

    lr: float = Field(
        5e-5, gt=0, allow_inf_nan=False
    )  # no upper bound: large rates diverge (recorded)
    batch_size: int = Field(32, ge=2)
    eval_batch_size: int = Field(128, ge=1)
    epochs: int = Field(3, ge=1)
    max_length: int = Field(128, ge=4, le=8192)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    pooling: Literal["cls", "pooler", "mean"] = "cls"
    num_threads: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_weights: bool = False


class HeadsConfig(RootModel[dict[str, SerializeAsAny[BaseModel]]]):
    """`finetune.heads`: the options of every registered [CLS] treatment (isoprobe.core.treatments),
    each validated by that treatment's options model (which holds the defaults: a treatment not
    given here takes them). `heads["isobn"]` is the options model, `options("isobn")` a dict."""

    model_config = ConfigDict(frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _by_registry(cls, data: Any) -> dict[str, BaseModel]:
        if isinstance(data, HeadsConfig):
            return dict(data.root)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValueError("expected a mapping: treatment name -> its options")
        errors: list[dict[str, Any]] = []
        for name, value in data.items():
            if name not in treatment_names():
                errors.append(
                    {"type": PydanticCustomError("unknown_treatment", treatments.unknown_message()),
                     "loc": (name,), "input": value}
                )  # fmt: skip
        out: dict[str, BaseModel] = {}
        for t in treatments.registered_treatments():
            try:
                out[t.name] = t.validate(data.get(t.name, {}))
            except ValidationError as err:
                errors.extend(
                    {"type": PydanticCustomError(e["type"], e["msg"]),
                     "loc": (t.name, *e["loc"]), "input": e.get("input")}
                    for e in err.errors(include_url=False)
                )  # fmt: skip
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return out

    def __getitem__(self, method: str) -> BaseModel:
        if method not in self.root:
            raise IsoprobeError(
                f"finetune.heads has no options of treatment '{method}' (registered after the "
                f"params were validated?); it has: {', '.join(self.root)}"
            )
        return self.root[method]

    def options(self, method: str) -> dict[str, Any]:
        """The options of treatment `method` as a plain dict (defaults filled in)."""
        return self[method].model_dump()


def _registered_method(name: str) -> str:
    if name not in treatment_names():
        raise PydanticCustomError("unknown_method", treatments.unknown_message())
    return name


# A treatment's name, validated against the registry (built-ins and user treatments).
Method = Annotated[str, AfterValidator(_registered_method)]
METHODS = BUILTIN_METHODS  # the built-in treatments (the default of finetune.methods)


class CheckpointConfig(Strict):
    """Fine-tuning checkpoints (model, optimizer, scheduler, RNG states, head buffers, step) in
    checkpoints/<task>/<method>/<seed>/: a rerun after a crash resumes from the last one."""

    enabled: bool = True
    every_steps: int = Field(
        0, ge=0
    )  # also every N optimizer steps; 0: at the end of each epoch only


LAUNCHER = r"^(python[0-9.]*|accelerate launch|torchrun)( [A-Za-z0-9_.=:/-]+)*$"


class FinetuneConfig(Strict):
    # None: every sentence task of pipeline.tasks (filled in by Params). dvc.yaml's matrix reads
    # the key from params.yaml, so a params file driving `dvc repro` spells it out.
    tasks: list[str] | None = Field(None, min_length=1)
    # registered treatments (isoprobe.core.treatments: the built-ins and any user treatment)
    methods: list[Method] = Field(default_factory=lambda: list(METHODS), min_length=1)
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1], min_length=1)
    # the program that runs stages/finetune.py (dvc.yaml's cmd): python, or a multi-process launcher
    launcher: str = Field("python", pattern=LAUNCHER)
    train: TrainConfig = TrainConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    # a diverged run (non-finite loss or gradient) fails its stage (stopping `dvc repro`) when true;
    # when false it is recorded as `status: diverged` and the other runs go on
    fail_fast: bool = False
    heads: HeadsConfig = Field(default_factory=lambda: HeadsConfig.model_validate({}))

    @field_validator("tasks", "methods", "seeds")
    @classmethod
    def _unique(cls, v: list | None) -> list | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("entries must be unique")
        return v

    @field_validator("seeds", mode="before")
    @classmethod
    def _integer_seeds(cls, v: Any) -> Any:
        if isinstance(v, list):
            for s in v:
                if isinstance(s, bool) or not isinstance(s, int):
                    raise ValueError(f"seeds must be integers, got {s!r}")
        return v


class LinearProbeOptions(Strict):
    c_grid: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0], min_length=1)
    max_iter: int = Field(1000, ge=10)

    @field_validator("c_grid")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(c <= 0 for c in v) or len(set(v)) != len(v):
            raise ValueError("c_grid must hold distinct values > 0")
        return v


class MLPProbeOptions(Strict):
    hidden_grid: list[tuple[int, int]] = Field(
        default_factory=lambda: [(256, 256), (128, 128)], min_length=1
    )
    l2_grid: list[float] = Field(default_factory=lambda: [1e-4, 1e-2], min_length=1)
    lr: float = Field(1e-3, gt=0, le=1)

    @field_validator("hidden_grid")
    @classmethod
    def _sizes(cls, v: list[tuple[int, int]]) -> list[tuple[int, int]]:
        if any(h < 1 for pair in v for h in pair) or len(set(v)) != len(v):
            raise ValueError("hidden_grid must hold distinct [h1, h2] pairs of sizes >= 1")
        return v

    @field_validator("l2_grid")
    @classmethod
    def _l2(cls, v: list[float]) -> list[float]:
        if any(a < 0 for a in v) or len(set(v)) != len(v):
            raise ValueError("l2_grid must hold distinct values >= 0")
        return v


class DirectProbeOptions(Strict):
    enabled: bool = True
    # seeded subsample of each split's rows (words for token tasks) DirectProbe clusters; null = all
    max_rows: int | None = Field(None, ge=2)


class ProbeConfig(Strict):
    """Probing (Zhou & Srikumar 2021, 2022): classifier probes, DirectProbe and the geometry of the
    change, per layer. `tasks` (sentence classification tasks among finetune.tasks) are probed
    through the pre-trained encoder and each of their fine-tuned encoders; `token_tasks` (conllu
    tasks among pipeline.tasks) through the pre-trained encoder and every fine-tuned encoder of
    finetune.tasks (does fine-tuning on one task change the geometry of another?)."""

    tasks: list[str] = Field(default_factory=list)
    token_tasks: list[str] = Field(default_factory=list)
    features: Literal["cls", "mean"] = "cls"  # sentence tasks; token tasks use word vectors
    # null: every layer (0 = embeddings); negative counts from the end
    layers: list[int] | None = Field(None, min_length=1)
    linear: LinearProbeOptions = LinearProbeOptions()
    mlp: MLPProbeOptions = MLPProbeOptions()
    directprobe: DirectProbeOptions = DirectProbeOptions()
    num_threads: int = Field(1, ge=0)  # CPU threads of the probes; 0 = every usable core
    seed: Seed = 0

    @field_validator("tasks", "token_tasks", "layers")
    @classmethod
    def _unique(cls, v: list | None) -> list | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("entries must be unique")
        return v


class TrackingConfig(Strict):
    enabled: bool = True
    uri: str | None = None
    # a store unusable when the stage starts (bad URI, unwritable, a server that does not answer)
    # stops the stage when true; when false the stage runs untracked and says so on stderr. A store
    # that fails mid-run never stops it: the outputs are finished and the warning says what was lost
    required: bool = True


class ReportConfig(Strict):
    """The report's statistics: paired tests at level alpha, bootstrap intervals."""

    alpha: float = Field(0.05, gt=0, lt=1)
    n_boot: int = Field(10000, ge=100)
    seed: Seed = 0


class Params(Strict):
    model: ModelConfig = ModelConfig()
    pipeline: PipelineConfig
    tasks: dict[str, TaskConfig] = Field(..., min_length=1)
    embed: EmbedConfig = EmbedConfig()
    isotropy: IsotropyConfig = IsotropyConfig()
    finetune: FinetuneConfig = Field(default_factory=lambda: FinetuneConfig())
    probe: ProbeConfig | None = None
    tracking: TrackingConfig = TrackingConfig()
    report: ReportConfig = ReportConfig()

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, v: dict[str, TaskConfig]) -> dict[str, TaskConfig]:
        for name in v:
            if not TASK_NAME.match(name):
                raise ValueError(
                    f"task name '{name}' must match {TASK_NAME.pattern} (it names folders)"
                )
        return v

    @model_validator(mode="after")
    def _selected_tasks_exist(self) -> Params:
        missing = [t for t in self.pipeline.tasks if t not in self.tasks]
        if missing:
            raise ValueError(
                f"pipeline.tasks names {missing} not defined under tasks; defined: {sorted(self.tasks)}"
            )
        if self.finetune.tasks is None:
            sentence = [t for t in self.pipeline.tasks if self.tasks[t].scheme != "conllu"]
            if not sentence:
                raise ValueError(
                    "finetune.tasks: not set, and pipeline.tasks has no sentence task to default to; "
                    f"pipeline.tasks: {self.pipeline.tasks}"
                )
            object.__setattr__(
                self, "finetune", self.finetune.model_copy(update={"tasks": sentence})
            )
        outside = [t for t in self.finetune.tasks if t not in self.pipeline.tasks]
        if outside:
            raise ValueError(
                f"finetune.tasks names {outside} that pipeline.tasks does not prepare; pipeline.tasks: {self.pipeline.tasks}"
            )
        token = [t for t in self.finetune.tasks if self.tasks[t].scheme == "conllu"]
        if token:
            raise ValueError(
                f"finetune.tasks: {token} are token-level (conllu) tasks; fine-tuning needs sentence tasks"
            )
        self._check_probe()
        return self

    def _check_probe(self) -> None:
        if self.probe is None:  # default: the fine-tuning tasks (params outside DVC may omit it)
            object.__setattr__(self, "probe", ProbeConfig(tasks=list(self.finetune.tasks)))
        pr = self.probe
        outside = [t for t in pr.tasks if t not in self.finetune.tasks]
        if outside:
            raise ValueError(
                f"probe.tasks names {outside} that finetune.tasks does not fine-tune (each probed "
                f"task is compared with its fine-tuned encoders); finetune.tasks: {self.finetune.tasks}"
            )
        bad = [
            t
            for t in pr.token_tasks
            if t not in self.pipeline.tasks or self.tasks[t].scheme != "conllu"
        ]
        if bad:
            raise ValueError(
                f"probe.token_tasks: {bad} must be token-level (conllu) tasks listed in pipeline.tasks; "
                f"pipeline.tasks: {self.pipeline.tasks}"
            )

    def task(self, name: str) -> TaskConfig:
        if name not in self.tasks:
            raise IsoprobeError(
                f"task '{name}' is not defined under tasks; defined: {sorted(self.tasks)}"
            )
        return self.tasks[name]


def parse_params(data: Any, source: str = "params") -> Params:
    """Validate an already-loaded mapping (against the treatments registered by then and those of
    installed entry points; `load_params` also imports the params file's `treatments/` folder)."""
    if not isinstance(data, dict):
        raise IsoprobeError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    treatments.load_entry_points()
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise IsoprobeError(treatments.format_errors(err, source, "(top level)")) from None


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (safe_load keeps the last
    silently, so an edit could be ignored without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (line {line}): give each key once"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str) -> Any:
    """yaml.safe_load, refusing duplicate keys."""
    loader = UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file (yaml.safe_load). The user treatments of the `treatments/`
    folder beside it are imported first, so `finetune.methods` may name them."""
    path = Path(path)
    if not path.is_file():
        raise IsoprobeError(f"params file not found: {path}")
    try:
        data = safe_load_unique(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise IsoprobeError(f"{path}: not valid YAML: {err}") from None
    treatments.load_user_treatments(path.resolve().parent)
    return parse_params(data, str(path))
