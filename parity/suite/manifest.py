"""The parity manifest: reported numbers as data (``parity/suite/manifest.yaml``), loaded and validated.

``load_manifest()`` reads the packaged YAML (or another file) into a ``Manifest`` of ``Row``
objects; ``Manifest.select`` picks rows by suite, name or tag. Every problem raises
``ManifestError`` with a one-line message naming the file, the row and the key.

A row whose numbers were published (tag ``official`` or ``port``) carries a ``Published``
record: the repository and commit (or arXiv id), table and row, the figures quoted as the source
prints them (checked here against ``reported``), and for repositories the date the figures first
stood there. Its evaluation protocol (``Row.protocol()``) is read from its options: scales,
flip, CRF, MSC, score-map upsampling, mean, test crop/pad and warp.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deeplab_caffe.models import MSC_RESIZES
from deeplab_caffe.parity.data.transforms import MEAN_ARITHMETIC, MEANS_BGR
from deeplab_caffe.parity.evaluation.evaluate import UPSAMPLING

MANIFEST_PATH = Path(__file__).resolve().parent / "manifest.yaml"
KINDS = ("structural", "forward", "metric")
#: reported metric name -> key of ``parity.evaluation.evaluate.EvalResult.scores`` (a 0-1 fraction there)
METRICS = {
    "PA": "Pixel Accuracy",
    "MA": "Mean Accuracy",
    "mIoU": "Mean IoU",
    "FWIoU": "Frequency Weighted IoU",
}
DEFAULT_SUITE = "smoke"
#: ``source.by`` values and the row tag each one requires
PUBLISHERS = ("official", "port")
#: ``options.upsample`` names ``UPSAMPLING`` (parity.evaluation.evaluate), ``options.mean`` names
#: ``MEANS_BGR`` (parity.data.transforms)
MEANS = tuple(MEANS_BGR)
#: options a published metric row must state (its evaluation protocol)
PROTOCOL_KEYS = ("scales", "flip", "crf", "msc", "upsample", "mean", "pad_to")

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_KEY = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_ROW_KEYS = {"name", "kind", "tags", "model", "dataset", "split", "weights", "options", "reported", "source",
             "tolerance", "blocked", "notes", "cost_gpu_hours"}
_SOURCE_KEYS = {"by", "repository", "commit", "file", "arxiv", "table", "row", "quote", "columns", "appeared",
                "cites"}
_FIGURE = re.compile(r"\d+\.\d+")  # a quoted figure: digits with a decimal point ("34.8", "86.9%")
_APPEARED = re.compile(r"^\d{4}-\d{2}-\d{2} \([0-9a-f]{7,40}\)$")
_WEIGHTS_KEYS = {"key", "release", "prototxt", "n_classes", "fixture", "train_config", "train_always", "recipe_sha256"}
_FIXTURE_KEYS = {"n_classes", "msc", "seed", "n_blocks", "stem_channels", "aspp_rates"}
#: option name -> accepted Python types (None allowed where listed)
_OPTIONS: dict[str, dict[str, tuple[type, ...]]] = {
    "structural": {},
    "forward": {"images": (list,), "size": (int,), "rtol": (float, int), "layer_rtol": (float, int),
                "layer_by_layer": (bool,)},
    "metric": {"scales": (list,), "flip": (bool,), "crf": (bool,), "msc": (bool,), "pad_to": (int, type(None)),
               "dataset_kwargs": (dict,), "max_images": (int, type(None)), "batch_size": (int,),
               "upsample": (str,), "mean": (str,), "msc_resize": (str,), "mean_arithmetic": (str,)},
}


class ManifestError(ValueError):
    """The manifest (or a selection from it) is malformed; the message names file, row and key."""

    exit_status = 2  # bad input, in the exit-code contract (converter.errors)


@dataclass(frozen=True)
class WeightsSpec:
    """Where a row's weights come from (see the header of ``manifest.yaml``)."""

    key: str
    release: str | None = None
    prototxt: str | None = None
    n_classes: int | None = None
    fixture: dict[str, Any] | None = None
    train_config: str | None = None
    train_always: bool = False
    recipe_sha256: str | None = None  # the recipe a pinned number was measured with


@dataclass(frozen=True)
class Published:
    """Where a row's reported numbers were published, precisely enough to look them up again.

    Either ``repository`` (``owner/name`` on GitHub) + ``commit`` + ``file``, or ``arxiv`` (an
    arXiv id); ``table`` and ``row`` locate the figures there; ``quote`` holds them as the source
    prints them, in the order of ``columns`` (metric names); ``appeared`` is the date (and short
    commit) the figures first stood in the repository; ``cites`` names the original a quoting
    source took them from.
    """

    by: str
    table: str
    row: str
    quote: str
    columns: tuple[str, ...]
    repository: str | None = None
    commit: str | None = None
    file: str | None = None
    arxiv: str | None = None
    appeared: str | None = None
    cites: str | None = None

    @property
    def url(self) -> str:
        """A link to the cited file at its commit, or to the arXiv abstract."""
        if self.repository:
            return f"https://github.com/{self.repository}/blob/{self.commit}/{self.file}"
        return f"https://arxiv.org/abs/{self.arxiv}"

    def figures(self) -> dict[str, float]:
        """The quoted figures by metric name (``quote`` read in ``columns`` order)."""
        return dict(zip(self.columns, (float(f) for f in _FIGURE.findall(self.quote))))

    def citation(self) -> str:
        """One line: where, which table and row, and since when."""
        where = (f"{self.repository}@{self.commit[:7]} {self.file}" if self.repository  # type: ignore[index]
                 else f"arXiv {self.arxiv}")
        since = f", since {self.appeared.split()[0]}" if self.appeared else ""
        return f"{where}: {self.table}, {self.row}{since}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict, with the link."""
        data = asdict(self)
        data["columns"] = list(self.columns)
        data["url"] = self.url
        return data


@dataclass(frozen=True)
class Row:
    """One reported number (or one structural / forward check) of the manifest."""

    name: str
    kind: str
    tags: tuple[str, ...]
    model: str
    weights: WeightsSpec
    dataset: str | None = None
    split: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    reported: dict[str, float] = field(default_factory=dict)
    source: str | None = None  # one line; ``published.citation()`` for published numbers
    tolerance: float | None = None
    blocked: str | None = None
    notes: str | None = None
    cost_gpu_hours: dict[str, float] = field(default_factory=dict)
    published: Published | None = None

    @property
    def status(self) -> str:
        """``blocked`` (can never run here; ``blocked`` says why) or ``runnable``."""
        return "blocked" if self.blocked else "runnable"

    def protocol(self) -> dict[str, Any] | None:
        """How a metric row is evaluated: input scales, flip, CRF, MSC fusion and the pyramid's
        resize (``msc_resize``, ``models.MSC_RESIZES``; the row's, whatever the checkpoint says;
        None when the row does not run MSC), score-map upsampling, mean (name, BGR values and
        ``mean_arithmetic``), the test crop/pad (``pad_to``) and the warp
        (``dataset_kwargs.warp_size``); None for other kinds. Unstated options take the
        evaluation's defaults (``align_corners_false``, ``voc``, ``float32``, no pad; an MSC row's
        pyramid ``caffe``)."""
        if self.kind != "metric":
            return None
        options = self.options
        mean = options.get("mean", "voc")
        return {"scales": list(options.get("scales", [1.0])), "flip": bool(options.get("flip", False)),
                "crf": bool(options.get("crf", False)), "msc": options.get("msc"),
                "msc_resize": options.get("msc_resize", "caffe") if options.get("msc") else None,
                "mean_arithmetic": options.get("mean_arithmetic", "float32"),
                "upsample": options.get("upsample", "align_corners_false"), "mean": mean,
                "mean_bgr": list(MEANS_BGR[mean]), "pad_to": options.get("pad_to"),
                "warp_size": (options.get("dataset_kwargs") or {}).get("warp_size")}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict, with the status and the protocol."""
        data = asdict(self)
        data["tags"] = list(self.tags)
        data["published"] = self.published.to_dict() if self.published else None
        data["status"] = self.status
        data["protocol"] = self.protocol()
        return data


@dataclass(frozen=True)
class Suite:
    """A named selection: rows carrying any of ``tags``, plus rows named in ``rows``; neither = all."""

    name: str
    description: str = ""
    tags: tuple[str, ...] = ()
    rows: tuple[str, ...] = ()


@dataclass
class Manifest:
    """Validated manifest rows (file order) and suites."""

    path: Path
    rows: list[Row]
    suites: dict[str, Suite]

    def row(self, name: str) -> Row:
        """The row called ``name``; ManifestError lists the known names otherwise."""
        for row in self.rows:
            if row.name == name:
                return row
        raise ManifestError(f"{self.path}: no row named {name!r} (deeplab-parity list shows them)")

    def tags(self) -> list[str]:
        """Every tag used by a row, sorted."""
        return sorted({tag for row in self.rows for tag in row.tags})

    def suite_rows(self, name: str) -> list[Row]:
        """Rows of a suite; a tag name or a row name also works as a suite name."""
        if name in self.suites:
            suite = self.suites[name]
            if not suite.tags and not suite.rows:
                return list(self.rows)
            return [r for r in self.rows if set(r.tags) & set(suite.tags) or r.name in suite.rows]
        if name in self.tags():
            return [r for r in self.rows if name in r.tags]
        if any(r.name == name for r in self.rows):
            return [self.row(name)]
        raise ManifestError(f"{self.path}: unknown suite {name!r} (suites: {', '.join(self.suites)}; "
                            f"or a tag: {', '.join(self.tags())})")

    def select(self, *, suite: str | None = None, rows: list[str] | None = None,
               tags: list[str] | None = None) -> list[Row]:
        """Rows to run: ``rows`` by name if given; else the suite (default ``smoke``, or every row
        when only ``tags`` are given) narrowed to rows carrying every tag in ``tags``."""
        if rows:
            wanted = set(rows)
            for name in rows:
                self.row(name)
            return [r for r in self.rows if r.name in wanted]
        if suite is None:
            selected = list(self.rows) if tags else self.suite_rows(DEFAULT_SUITE)
        else:
            selected = self.suite_rows(suite)
        for tag in tags or []:
            if tag not in self.tags():
                raise ManifestError(f"{self.path}: unknown tag {tag!r} (tags: {', '.join(self.tags())})")
            selected = [r for r in selected if tag in r.tags]
        return selected


def _fail(where: str, key: str, problem: str) -> ManifestError:
    return ManifestError(f"{where}: key {key!r} {problem}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_type(where: str, key: str, value: Any, types: tuple[type, ...]) -> None:
    if isinstance(value, bool) and bool not in types:
        raise _fail(where, key, f"must be {' or '.join(t.__name__ for t in types)}, got {value!r}")
    if not isinstance(value, types):
        raise _fail(where, key, f"must be {' or '.join(t.__name__ for t in types)}, got {value!r}")


def _optional_str(where: str, data: dict, key: str) -> str | None:
    value = data.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise _fail(where, key, f"must be a non-empty string, got {value!r}")
    return value


def _parse_weights(where: str, data: Any) -> WeightsSpec:
    if not isinstance(data, dict):
        raise _fail(where, "weights", f"must be a mapping, got {data!r}")
    unknown = set(data) - _WEIGHTS_KEYS
    if unknown:
        raise _fail(where, f"weights.{sorted(unknown)[0]}", f"is unknown (known: {', '.join(sorted(_WEIGHTS_KEYS))})")
    key = data.get("key")
    if not isinstance(key, str) or not _KEY.match(key):
        raise _fail(where, "weights.key", f"must be a lowercase identifier (letters, digits, _), got {key!r}")
    n_classes = data.get("n_classes")
    if n_classes is not None and (not isinstance(n_classes, int) or isinstance(n_classes, bool) or n_classes < 1):
        raise _fail(where, "weights.n_classes", f"must be a positive integer, got {n_classes!r}")
    fixture = data.get("fixture")
    if fixture is not None:
        if not isinstance(fixture, dict):
            raise _fail(where, "weights.fixture", f"must be a mapping, got {fixture!r}")
        unknown = set(fixture) - _FIXTURE_KEYS
        if unknown:
            known = ", ".join(sorted(_FIXTURE_KEYS))
            raise _fail(where, f"weights.fixture.{sorted(unknown)[0]}", f"is unknown (known: {known})")
        if not isinstance(fixture.get("n_classes"), int):
            raise _fail(where, "weights.fixture.n_classes", f"must be an integer, got {fixture.get('n_classes')!r}")
    train_always = data.get("train_always", False)
    if not isinstance(train_always, bool):
        raise _fail(where, "weights.train_always", f"must be true or false, got {train_always!r}")
    spec = WeightsSpec(
        key=key, release=_optional_str(where, data, "release"), prototxt=_optional_str(where, data, "prototxt"),
        n_classes=n_classes, fixture=dict(fixture) if fixture else None,
        train_config=_optional_str(where, data, "train_config"), train_always=train_always,
        recipe_sha256=_optional_str(where, data, "recipe_sha256"),
    )
    if spec.recipe_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", spec.recipe_sha256):
        raise _fail(where, "weights.recipe_sha256", f"must be 64 hex digits, got {spec.recipe_sha256!r}")
    if spec.train_always and not spec.train_config:
        raise _fail(where, "weights.train_always", "needs weights.train_config")
    if spec.release and spec.fixture:
        raise _fail(where, "weights.fixture", "cannot be combined with weights.release")
    return spec


def _parse_options(where: str, kind: str, options: Any) -> dict[str, Any]:
    """A row's options, checked against what its kind accepts (names, types, known values)."""
    if not isinstance(options, dict):
        raise _fail(where, "options", f"must be a mapping, got {options!r}")
    allowed = _OPTIONS[kind]
    for key, value in options.items():
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise _fail(where, f"options.{key}", f"is not an option of a {kind} row (known: {known})")
        _check_type(where, f"options.{key}", value, allowed[key])
    if "scales" in options and (not options["scales"] or not all(_number(s) and s > 0 for s in options["scales"])):
        raise _fail(where, "options.scales", f"must be a list of positive numbers, got {options['scales']!r}")
    for key in ("rtol", "layer_rtol"):
        if key in options and not options[key] > 0:
            raise _fail(where, f"options.{key}", f"must be positive, got {options[key]!r}")
    for key, known in (("upsample", UPSAMPLING), ("mean", MEANS), ("msc_resize", MSC_RESIZES),
                       ("mean_arithmetic", MEAN_ARITHMETIC)):
        if key in options and options[key] not in known:
            raise _fail(where, f"options.{key}", f"must be one of {', '.join(known)}, got {options[key]!r}")
    return dict(options)


def _parse_published(where: str, data: Any, reported: dict[str, Any]) -> Published:
    """A ``source`` mapping: where the numbers were published, checked for completeness and
    against the row's ``reported`` (the quoted figures, read in ``columns`` order, must equal it)."""
    unknown = set(data) - _SOURCE_KEYS
    if unknown:
        raise _fail(where, f"source.{sorted(unknown)[0]}", f"is unknown (known: {', '.join(sorted(_SOURCE_KEYS))})")
    text: dict[str, str | None] = {}
    for key in _SOURCE_KEYS - {"columns"}:
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise _fail(where, f"source.{key}", f"must be a non-empty string, got {value!r}")
        text[key] = value
    for key in ("by", "table", "row", "quote"):
        if text[key] is None:
            raise _fail(where, f"source.{key}", "is required")
    if text["by"] not in PUBLISHERS:
        raise _fail(where, "source.by", f"must be one of {', '.join(PUBLISHERS)}, got {text['by']!r}")
    in_repository = [text[k] for k in ("repository", "commit", "file")]
    if text["arxiv"] is not None:
        if any(in_repository) or not re.fullmatch(r"\d{4}\.\d{4,5}", text["arxiv"]):
            raise _fail(where, "source.arxiv", "must be an arXiv id (YYMM.NNNNN) without repository/commit/file")
    elif not all(in_repository):
        raise _fail(where, "source", "needs repository + commit + file, or arxiv")
    elif not re.fullmatch(r"[\w.-]+/[\w.-]+", text["repository"]) or not re.fullmatch(r"[0-9a-f]{40}", text["commit"]):
        raise _fail(where, "source.commit", "must be 40 hex digits, with repository as owner/name")
    elif text["appeared"] is None or not _APPEARED.match(text["appeared"]):
        raise _fail(where, "source.appeared", "must be 'YYYY-MM-DD (commit)': when the figures first stood there")
    columns = data.get("columns")
    if not isinstance(columns, list) or not columns or len(set(columns)) != len(columns) or set(columns) != set(reported):
        raise _fail(where, "source.columns", f"must list each reported metric once ({', '.join(reported)}), "
                                             f"got {columns!r}")
    published = Published(columns=tuple(columns), **{k: v for k, v in text.items()})
    quoted = _FIGURE.findall(published.quote)
    if len(quoted) != len(columns) or published.figures() != {k: float(v) for k, v in reported.items()}:
        raise _fail(where, "source.quote", f"reads {', '.join(quoted) or 'no figures'} for {', '.join(columns)}, "
                                           f"which is not 'reported' {reported}")
    return published


def _row_published(where: str, data: dict, kind: str, tags: list[str], reported: dict[str, Any],
                   options: dict[str, Any]) -> Published | None:
    """The ``Published`` record of a metric row tagged ``official`` or ``port`` (required there,
    with its protocol stated in full unless the row is blocked); None for other rows, whose
    ``source`` is one line."""
    publisher = [tag for tag in PUBLISHERS if tag in tags]
    raw = data.get("source")
    if kind != "metric" or not publisher:
        if isinstance(raw, dict):
            raise _fail(where, "source", "is a published-numbers record, only for metric rows tagged official or port")
        return None
    if len(publisher) > 1 or not isinstance(raw, dict):
        raise _fail(where, "source", "of a metric row tagged official or port (one of them) must be a mapping: "
                                     "by, repository + commit + file or arxiv, table, row, quote, columns, appeared")
    if not isinstance(reported, dict) or not reported:
        raise _fail(where, "reported", "is required for a metric row")
    published = _parse_published(where, raw, reported)
    if published.by != publisher[0]:
        raise _fail(where, "source.by", f"is {published.by!r} but the row is tagged {publisher[0]!r}")
    missing = [key for key in PROTOCOL_KEYS if key not in options]
    if missing and not data.get("blocked"):  # a blocked row never runs; its protocol may be unknown
        raise _fail(where, f"options.{missing[0]}", "is required: a published row states its whole evaluation "
                                                   f"protocol ({', '.join(PROTOCOL_KEYS)})")
    return published


def _parse_row(where: str, data: Any) -> Row:
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: a row must be a mapping, got {data!r}")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(where, "name", f"must be lowercase letters, digits and dashes, got {name!r}")
    where = f"{where.rsplit(':', 1)[0]}: row {name!r}"
    unknown = set(data) - _ROW_KEYS
    if unknown:
        raise _fail(where, sorted(unknown)[0], f"is unknown (known: {', '.join(sorted(_ROW_KEYS))})")
    kind = data.get("kind")
    if kind not in KINDS:
        raise _fail(where, "kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    tags = data.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and _KEY.match(t) for t in tags):
        raise _fail(where, "tags", f"must be a list of lowercase identifiers, got {tags!r}")
    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _fail(where, "model", f"must be a non-empty string, got {model!r}")
    if "weights" not in data:
        raise _fail(where, "weights", "is missing")
    weights = _parse_weights(where, data["weights"])

    options = _parse_options(where, kind, data.get("options") or {})

    reported = data.get("reported") or {}
    if not isinstance(reported, dict):
        raise _fail(where, "reported", f"must be a mapping of metric -> percent, got {reported!r}")
    for metric, value in reported.items():
        if metric not in METRICS:
            raise _fail(where, f"reported.{metric}", f"is not a known metric (known: {', '.join(METRICS)})")
        if not _number(value) or not 0 <= value <= 100:
            raise _fail(where, f"reported.{metric}", f"must be a percentage 0-100, got {value!r}")
    tolerance = data.get("tolerance")
    dataset, split = data.get("dataset"), data.get("split")
    published = _row_published(where, data, kind, tags, reported, options)
    source = published.citation() if published else _optional_str(where, data, "source")
    if kind == "metric":
        if not reported:
            raise _fail(where, "reported", "is required for a metric row")
        if source is None:
            raise _fail(where, "source", "is required for a metric row (who reported the numbers)")
        if not _number(tolerance) or tolerance <= 0:
            raise _fail(where, "tolerance", f"must be a positive number of percentage points, got {tolerance!r}")
        for key, value in (("dataset", dataset), ("split", split)):
            if not isinstance(value, str) or not value:
                raise _fail(where, key, f"is required for a metric row, got {value!r}")
    else:
        if reported:
            raise _fail(where, "reported", f"is only for metric rows, not {kind}")
        if not (weights.release or weights.fixture):
            raise _fail(where, "weights", f"of a {kind} row needs 'release' (a Caffe file) or 'fixture'")
    cost = data.get("cost_gpu_hours") or {}
    if not isinstance(cost, dict) or not all(k in ("eval", "train") and _number(v) and v >= 0 for k, v in cost.items()):
        raise _fail(where, "cost_gpu_hours", f"must be {{eval: hours, train: hours}}, got {cost!r}")
    return Row(
        name=name, kind=kind, tags=tuple(tags), model=model.strip(), weights=weights, dataset=dataset, split=split,
        options=dict(options), reported={k: float(v) for k, v in reported.items()}, source=source,
        tolerance=float(tolerance) if tolerance is not None else None, blocked=_optional_str(where, data, "blocked"),
        notes=_optional_str(where, data, "notes"), cost_gpu_hours={k: float(v) for k, v in cost.items()},
        published=published,
    )


def _parse_suites(path: Path, data: Any, rows: list[Row]) -> dict[str, Suite]:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: key 'suites' must be a mapping of name -> {{tags, rows}}")
    names = {r.name for r in rows}
    tags = {t for r in rows for t in r.tags}
    suites = {}
    for name, spec in data.items():
        where = f"{path}: suite {name!r}"
        spec = spec or {}
        if not isinstance(spec, dict) or set(spec) - {"description", "tags", "rows"}:
            raise ManifestError(f"{where}: must be a mapping with description, tags, rows")
        for key, known in (("tags", tags), ("rows", names)):
            values = spec.get(key) or []
            if not isinstance(values, list):
                raise _fail(where, key, f"must be a list, got {values!r}")
            for value in values:
                if value not in known:
                    raise _fail(where, key, f"names {value!r}, which no row has")
        suites[name] = Suite(name, str(spec.get("description", "")), tuple(spec.get("tags") or ()),
                             tuple(spec.get("rows") or ()))
    if DEFAULT_SUITE not in suites:
        raise ManifestError(f"{path}: the default suite {DEFAULT_SUITE!r} is missing")
    return suites


def load_manifest(path: str | Path | None = None) -> Manifest:
    """Load and validate a manifest (default: the packaged ``parity/suite/manifest.yaml``)."""
    path = Path(path) if path is not None else MANIFEST_PATH
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ManifestError(f"{path}: cannot read ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ManifestError(f"{path}: not valid YAML ({first})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: the manifest must be a mapping with 'version', 'suites' and 'rows'")
    if data.get("version") != 1:
        raise ManifestError(f"{path}: key 'version' must be 1, got {data.get('version')!r}")
    raw_rows = data.get("rows")
    if not isinstance(raw_rows, list) or not raw_rows:
        raise ManifestError(f"{path}: key 'rows' must be a non-empty list")
    rows: list[Row] = []
    for index, raw in enumerate(raw_rows):
        row = _parse_row(f"{path}: row {index}", raw)
        if any(r.name == row.name for r in rows):
            raise ManifestError(f"{path}: row {row.name!r}: key 'name' is used twice")
        rows.append(row)
    keys: dict[str, WeightsSpec] = {}
    for row in rows:
        other = keys.setdefault(row.weights.key, row.weights)
        if (other.release, other.fixture) != (row.weights.release, row.weights.fixture):
            raise ManifestError(f"{path}: row {row.name!r}: key 'weights.key' {row.weights.key!r} names other weights "
                                f"elsewhere (release/fixture differ)")
    unknown = set(data) - {"version", "suites", "rows"}
    if unknown:
        raise ManifestError(f"{path}: key {sorted(unknown)[0]!r} is unknown (known: version, suites, rows)")
    return Manifest(path=path, rows=rows, suites=_parse_suites(path, data.get("suites"), rows))
