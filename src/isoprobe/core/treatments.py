"""The registry of [CLS] treatments: the one list of methods that `finetune.methods` accepts.

A treatment is a name, an options model (a pydantic model whose field defaults are the only defaults
of the treatment's options; `finetune.heads.<name>` in params.yaml is validated against it) and how
to build the module that maps [CLS] x [B, H] -> [B, H]: `build(hidden, **options)`, a callable or a
lazy reference "package.module:attribute" (the built-ins name theirs so, so that validating params
never imports torch).

Users add treatments without editing isoprobe, two ways:

- a module in the project folder `treatments/` (beside params.yaml) that calls `register_treatment`:
  `load_params` imports every `treatments/*.py` (names not starting with `_`) before it validates,
  and dvc.yaml lists the folder as a dep, so DVC reruns what a change of that code affects;
- an installed package with an entry point in the group `isoprobe.treatments` (ENTRY_POINT_GROUP)
  whose name is the treatment's name and whose object is a `Treatment` (or a module that registers
  it on import). DVC cannot hash installed code: the distribution's name and version are recorded
  in each run instead (`origin`: MLflow params `treatments.<name>`, head.json `treatment`).

Imports: nothing of isoprobe outside `core` (builders are resolved only when a module is built).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import re
import sys
import traceback
import types
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from isoprobe.core.errors import IsoprobeError

ENTRY_POINT_GROUP = "isoprobe.treatments"
FOLDER = "treatments"  # beside the params file
PACKAGE = "isoprobe_treatments"  # the package the folder's modules are imported as
NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # names folders, DVC stage names and MLflow param keys
BUILTIN_ORIGIN = "isoprobe"
HOWTO = "add your own: README, 'Add your own treatment'"


class TreatmentOptions(BaseModel):
    """Base of an options model: unknown keys are errors (named with their key path), values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoOptions(TreatmentOptions):
    """Options of a treatment that takes none."""


# --------------------------------------------------------------------------- built-in options


class LayerNormOptions(TreatmentOptions):
    eps: float = Field(1e-12, gt=0)


class BatchNormOptions(TreatmentOptions):
    momentum: float = Field(0.1, gt=0, le=1)
    eps: float = Field(1e-5, gt=0)


class IsoBNOptions(TreatmentOptions):
    momentum: float = Field(0.05, gt=0, le=1)
    beta: float = Field(0.5, ge=0)
    eps: float = Field(1e-3, gt=0)


class WhitenOptions(TreatmentOptions):
    momentum: float = Field(0.05, gt=0, le=1)
    shrinkage: float = Field(0.1, ge=0, le=1)
    eps: float = Field(1e-5, gt=0)


# --------------------------------------------------------------------------- the registry


class UnknownTreatmentError(IsoprobeError, ValueError):
    """A method name no treatment is registered under."""


class TreatmentOptionsError(IsoprobeError, ValueError):
    """Options a treatment's options model rejects (the message names their keys)."""


@dataclasses.dataclass(frozen=True)
class Treatment:
    """One [CLS] treatment. `build(hidden, **options)` returns the torch module; `build` may be a
    lazy reference "package.module:attribute". `origin` says where the code comes from (built-in,
    a file of treatments/ with its sha256, or an installed distribution and its version)."""

    name: str
    options: type[BaseModel] = NoOptions
    build: Callable[..., Any] | str = ""
    origin: str = ""

    @property
    def builtin(self) -> bool:
        return self.origin == BUILTIN_ORIGIN

    def defaults(self) -> BaseModel:
        return self.validate({})

    def validate(self, options: Mapping[str, Any] | BaseModel | None = None) -> BaseModel:
        """The options as the options model (defaults filled in). Raises pydantic's
        ValidationError, its locations relative to the treatment's options."""
        if isinstance(options, self.options):
            return options
        data = {} if options is None else options
        if not self.options.model_fields and isinstance(data, Mapping) and data:
            raise ValidationError.from_exception_data(
                self.options.__name__,
                [
                    {
                        "type": PydanticCustomError("no_options", f"{self.name} takes no options"),
                        "loc": (),
                        "input": dict(data),
                    }
                ],
            )
        return self.options.model_validate(data)

    def builder(self) -> Callable[..., Any]:
        """`build`, the lazy reference imported."""
        if callable(self.build):
            return self.build
        module, _, attr = self.build.partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as err:
            raise IsoprobeError(
                f"treatment '{self.name}' ({self.origin}): cannot load its builder "
                f"'{self.build}': {err}"
            ) from err
        if not callable(obj):
            raise IsoprobeError(
                f"treatment '{self.name}' ({self.origin}): '{self.build}' is not callable"
            )
        return obj

    def make(self, hidden: int, options: Mapping[str, Any] | BaseModel | None = None) -> Any:
        """The module for vectors of width `hidden` (bad options: IsoprobeError with their keys)."""
        try:
            opts = self.validate(options)
        except ValidationError as err:
            raise TreatmentOptionsError(
                format_errors(err, f"options of treatment '{self.name}'")
            ) from None
        return self.builder()(hidden, **dict(opts))


def format_errors(err: ValidationError, prefix: str, top_level: str | None = None) -> str:
    """One line per error: `<prefix>: <key path>: <message> (got <value>)`; an error of the whole
    input names `top_level` as its key path (or none)."""
    lines = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"]) or top_level
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        got = e.get("input")
        shown = "" if isinstance(got, dict) or e["type"] == "missing" else f" (got {got!r})"
        lines.append(f"{prefix}: {loc + ': ' if loc else ''}{msg}{shown}")
    return "\n".join(lines)


_REGISTRY: dict[str, Treatment] = {}
_loading: list[str] = []  # origin of the user module being imported (folder or entry point)


def _check(t: Treatment) -> None:
    if not isinstance(t.name, str) or not NAME.match(t.name):
        raise IsoprobeError(
            f"treatment name {t.name!r} must match {NAME.pattern} (it names folders, DVC stages "
            f"and MLflow params)"
        )
    model = t.options
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise IsoprobeError(
            f"treatment '{t.name}': options must be a pydantic model class (subclass "
            f"isoprobe.TreatmentOptions), got {model!r}"
        )
    if model.model_config.get("extra") != "forbid":
        raise IsoprobeError(
            f"treatment '{t.name}': options model {model.__name__} must forbid unknown keys (a "
            f"typo would be ignored): subclass isoprobe.TreatmentOptions or set extra='forbid'"
        )
    b = t.build
    if not (callable(b) or (isinstance(b, str) and re.match(r"^[\w.]+:[\w.]+$", b))):
        raise IsoprobeError(
            f"treatment '{t.name}': build must be a callable build(hidden, **options) or "
            f"'package.module:attribute', got {b!r}"
        )


def _add(t: Treatment, replace: bool = False) -> Treatment:
    _check(t)
    old = _REGISTRY.get(t.name)
    if old is not None and old.builtin and not t.builtin:
        raise IsoprobeError(f"treatment '{t.name}' is built into isoprobe; choose another name")
    if old is not None and not replace and old.origin != t.origin:
        raise IsoprobeError(
            f"treatment '{t.name}' is registered twice: by {old.origin} and by {t.origin}"
        )
    _REGISTRY[t.name] = t
    return t


def register_treatment(
    name: str,
    options: type[BaseModel] | None = None,
    build: Callable[..., Any] | str | None = None,
    *,
    replace: bool = False,
) -> Any:
    """Register the [CLS] treatment `name`: `finetune.methods` may then name it, and
    `finetune.heads.<name>` holds its options, validated by `options` (a TreatmentOptions subclass;
    None: it takes none). `build(hidden, **options)` returns the torch module [B, H] -> [B, H].

    Without `build` it is a decorator of the builder (a function or an nn.Module class):

        @register_treatment("rmsnorm", RMSNormOptions)
        class RMSNorm(nn.Module): ...

    Registering a name again from the same place (a re-import) replaces it; from elsewhere it is an
    error unless `replace`. Built-in names cannot be replaced. Returns the Treatment (the builder
    when used as a decorator)."""
    if build is None:

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            register_treatment(name, options, fn, replace=replace)
            return fn

        return decorate
    if _loading:
        origin = _loading[-1]
    elif callable(build):
        origin = f"module {getattr(build, '__module__', '?')}"
    else:
        origin = f"module {build.partition(':')[0]}"
    return _add(Treatment(name, options or NoOptions, build, origin), replace=replace)


def unregister_treatment(name: str) -> None:
    """Remove a user treatment (built-ins stay)."""
    t = _REGISTRY.get(name)
    if t is not None and t.builtin:
        raise IsoprobeError(f"treatment '{name}' is built into isoprobe")
    _REGISTRY.pop(name, None)


def treatment_names() -> tuple[str, ...]:
    """Every registered name: the built-ins first, then user treatments in registration order."""
    return tuple(_REGISTRY)


def registered_treatments() -> tuple[Treatment, ...]:
    return tuple(_REGISTRY.values())


def unknown_message(name: str | None = None) -> str:
    """Why `name` is no method, listing the registered ones (without `name`: for a message that
    shows the value itself)."""
    quoted = ", ".join(f"'{n}'" for n in _REGISTRY)
    what = f"unknown method '{name}'" if name is not None else "not a registered treatment"
    return f"{what}; registered: {quoted} ({HOWTO})"


def get_treatment(name: str) -> Treatment:
    """The treatment `name` (installed entry points are looked at first on a miss)."""
    if name not in _REGISTRY:
        load_entry_points()
    if name not in _REGISTRY:
        raise UnknownTreatmentError(unknown_message(name))
    return _REGISTRY[name]


_BUILTINS = (
    Treatment("baseline", NoOptions, "isoprobe.finetune.heads.basic:identity"),
    Treatment("layernorm", LayerNormOptions, "isoprobe.finetune.heads.basic:layernorm"),
    Treatment("batchnorm", BatchNormOptions, "isoprobe.finetune.heads.batchnorm:batchnorm"),
    Treatment("standardize", BatchNormOptions, "isoprobe.finetune.heads.batchnorm:standardize"),
    Treatment("isobn", IsoBNOptions, "isoprobe.finetune.heads.isobn:IsoBN"),
    Treatment("whiten", WhitenOptions, "isoprobe.finetune.heads.whiten:Whiten"),
)
for _t in _BUILTINS:
    _add(dataclasses.replace(_t, origin=BUILTIN_ORIGIN))
BUILTIN_METHODS = tuple(t.name for t in _BUILTINS)


# --------------------------------------------------------------------------- user treatments


@contextmanager
def _origin(origin: str) -> Iterator[None]:
    _loading.append(origin)
    try:
        yield
    finally:
        _loading.pop()


def _import_error(where: str, err: BaseException) -> IsoprobeError:
    frames = [f for f in traceback.extract_tb(err.__traceback__) if "importlib" not in f.filename]
    at = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    detail = "".join(traceback.format_exception_only(type(err), err)).strip()
    return IsoprobeError(f"{where}: {detail}{at}")


_folder: dict[str, Any] = {"path": None, "names": ()}


def load_folder(folder: str | Path) -> tuple[str, ...]:
    """Import the treatment modules of `folder` (`*.py` and packages whose names do not start with
    `_`; sorted; imported as `isoprobe_treatments.<name>`, so they may import each other relatively).
    Once per folder and process; loading another folder first forgets the previous one's treatments.
    Returns the names the folder registered."""
    folder = Path(folder).resolve()
    if _folder["path"] == folder:
        return _folder["names"]
    forget_folder()
    modules = sorted(
        p
        for p in (folder.iterdir() if folder.is_dir() else ())
        if not p.name.startswith(("_", "."))
        and ((p.suffix == ".py" and p.is_file()) or (p / "__init__.py").is_file())
    )
    if not modules:
        return ()
    package = types.ModuleType(PACKAGE, f"[CLS] treatments of {folder}")
    package.__path__ = [str(folder)]
    sys.modules[PACKAGE] = package
    _folder["path"] = folder
    before = set(_REGISTRY)
    try:
        for path in modules:
            file = path if path.suffix == ".py" else path / "__init__.py"
            digest = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
            rel = f"{FOLDER}/{path.name}"
            with _origin(f"{rel} sha256:{digest}"):
                try:
                    importlib.import_module(f"{PACKAGE}.{path.stem}")
                except IsoprobeError as err:
                    raise IsoprobeError(f"{rel}: {err}") from None
                except Exception as err:
                    raise _import_error(f"{rel}: cannot import the treatment module", err) from err
    except BaseException:  # nothing of a folder that does not load stays registered
        _folder["names"] = tuple(n for n in _REGISTRY if n not in before)
        forget_folder()
        raise
    _folder["names"] = tuple(n for n in _REGISTRY if n not in before)
    return _folder["names"]


def forget_folder() -> None:
    """Unregister the treatments of the loaded folder and drop its modules (tests, another folder)."""
    for name in _folder["names"]:
        _REGISTRY.pop(name, None)
    for mod in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[mod]
    _folder.update(path=None, names=())


_entry_points: dict[str, Any] = {"path": None, "done": set()}


def load_entry_points() -> None:
    """Register the treatments of installed packages: entry points of the group
    `isoprobe.treatments`, `<name> = package.module:OBJECT` with OBJECT a Treatment named <name>,
    or `<name> = package.module` registering it on import. Each is loaded once; the group is
    looked up again only when sys.path changed."""
    key = tuple(sys.path)
    if _entry_points["path"] == key:
        return
    _entry_points["path"] = key
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        where = f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"
        ident = (where, ep.name, ep.value)
        if ident in _entry_points["done"]:
            continue
        _entry_points["done"].add(ident)
        origin = f"{where} (entry point {ENTRY_POINT_GROUP}: {ep.name} = {ep.value})"
        label = f"entry point '{ep.name} = {ep.value}' of {where}"
        with _origin(origin):
            try:
                obj = ep.load()
            except IsoprobeError as err:
                raise IsoprobeError(f"{label}: {err}") from None
            except Exception as err:
                raise _import_error(f"{label}: cannot load it", err) from err
            if isinstance(obj, Treatment):
                if obj.name != ep.name:
                    raise IsoprobeError(f"{label}: names treatment '{obj.name}', not '{ep.name}'")
                _add(dataclasses.replace(obj, origin=origin))
            elif not (isinstance(obj, types.ModuleType) and ep.name in _REGISTRY):
                raise IsoprobeError(
                    f"{label}: expected a Treatment object or a module that registers "
                    f"'{ep.name}', got {type(obj).__name__}"
                )


def load_user_treatments(project: str | Path | None = None) -> None:
    """Installed entry points, and with `project` the modules of `<project>/treatments/`."""
    load_entry_points()
    if project is not None:
        load_folder(Path(project) / FOLDER)


def reset_user_treatments() -> None:
    """Back to the built-ins only (for tests): forgets the folder and every user registration."""
    forget_folder()
    for name in [n for n, t in _REGISTRY.items() if not t.builtin]:
        del _REGISTRY[name]
    _entry_points.update(path=None, done=set())
