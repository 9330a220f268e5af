"""Series classification: which series of a study is T1, T1ce, T2, FLAIR or other.

The rules live in a YAML file (``listener/rules.yaml`` ships the defaults;
``settings.classification_rules`` names an override), so an admin can adapt
them to a site's naming without touching code. The file's header comment is
the reference for the rule language, the scoring, the confidence and the
tie-breaking between two series that claim the same role.

Every decision is explainable: :class:`Classification` carries the role, a
confidence in [0, 1] and one reason per rule that fired, naming the header
values that matched.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from neuroseg.worker.contracts import SequenceRole

log = logging.getLogger(__name__)

DEFAULT_RULES_PATH = Path(__file__).with_name("rules.yaml")

_LIST_CONDITIONS = {
    "image_type_any": "image_type",
    "image_type_none": "image_type",
    "scanning_sequence_any": "scanning_sequence",
    "scanning_sequence_none": "scanning_sequence",
    "sequence_variant_any": "sequence_variant",
    "modality_any": "modality",
    "modality_none": "modality",
}
_REGEX_CONDITIONS = {
    "description": "description",
    "not_description": "description",
    "protocol": "protocol_name",
    "not_protocol": "protocol_name",
    "sequence_name": "sequence_name",
}
_RANGE_CONDITIONS = {"tr": "repetition_time", "te": "echo_time", "ti": "inversion_time"}
SERIES_PREFERENCES = ("acquisition_3d", "slices", "series_number", "confidence")
# used when a rules file leaves these keys out
DEFAULT_REQUIRED_ROLES = {"all_of": ["FLAIR"], "any_of": ["T1ce", "T1", "T2"]}
DEFAULT_ROLE_ORDER = ["FLAIR", "T1ce", "T1", "T2", "other"]
DEFAULT_SERIES_PREFERENCE = ["acquisition_3d", "slices", "series_number"]
_NO_AGENT = {"", "none", "no", "n/a", "na", "0"}


class RulesError(ValueError):
    """The classification rules file is invalid; the message names the file, rule and key."""


def _normalise(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").split())


def _as_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(part.strip().upper() for part in value.split("\\") if part.strip())
    return tuple(str(part).strip().upper() for part in value if str(part).strip())


def _as_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
        if value is None:
            return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class SeriesHeader:
    """The header values the classifier reads from one instance of a series.

    Times are in milliseconds, as DICOM stores them. ``instance_count`` and
    ``number_of_frames`` give the number of slices used to break ties.
    """

    series_instance_uid: str
    series_description: str = ""
    protocol_name: str = ""
    sequence_name: str = ""
    scanning_sequence: tuple[str, ...] = ()
    sequence_variant: tuple[str, ...] = ()
    repetition_time: float | None = None
    echo_time: float | None = None
    inversion_time: float | None = None
    contrast_bolus_agent: str = ""
    image_type: tuple[str, ...] = ()
    mr_acquisition_type: str = ""
    modality: str = "MR"
    series_number: int | None = None
    sop_class_uid: str = ""
    instance_count: int = 1
    number_of_frames: int = 1

    @property
    def description(self) -> str:
        """SeriesDescription, or ProtocolName when the description is empty (normalised)."""
        return _normalise(self.series_description or self.protocol_name)

    @property
    def slices(self) -> int:
        return max(1, self.instance_count) * max(1, self.number_of_frames)

    @property
    def has_contrast_agent(self) -> bool:
        return self.contrast_bolus_agent.strip().lower() not in _NO_AGENT

    @classmethod
    def from_dataset(cls, dataset: Any, instance_count: int = 1) -> "SeriesHeader":
        """Build from a pydicom ``Dataset`` (single-frame or Enhanced MR, pixel data not needed)."""
        get = dataset.get
        timing = _enhanced_item(dataset, "MRTimingAndRelatedParametersSequence")
        echo = _enhanced_item(dataset, "MREchoSequence")
        modifier = _enhanced_item(dataset, "MRModifierSequence")
        repetition_time = _as_float(get("RepetitionTime"))
        if repetition_time is None and timing is not None:
            repetition_time = _as_float(timing.get("RepetitionTime"))
        echo_time = _as_float(get("EchoTime"))
        if echo_time is None and echo is not None:
            echo_time = _as_float(echo.get("EffectiveEchoTime"))
        inversion_time = _as_float(get("InversionTime"))
        if inversion_time is None and modifier is not None:
            inversion_time = _as_float(modifier.get("InversionTimes"))
        scanning_sequence = _as_tuple(get("ScanningSequence"))
        if not scanning_sequence and get("EchoPulseSequence"):
            scanning_sequence = _as_tuple({"SPIN": "SE", "GRADIENT": "GR", "BOTH": "SE\\GR"}.get(
                str(get("EchoPulseSequence")).upper(), ""))
            if str(get("InversionRecovery", "")).upper() == "YES":
                scanning_sequence += ("IR",)
        series_number = get("SeriesNumber")
        try:
            series_number = int(series_number) if series_number not in (None, "") else None
        except (TypeError, ValueError):
            series_number = None
        frames = get("NumberOfFrames")
        try:
            frames = int(frames) if frames not in (None, "") else 1
        except (TypeError, ValueError):
            frames = 1
        return cls(
            series_instance_uid=str(get("SeriesInstanceUID", "")),
            series_description=str(get("SeriesDescription", "") or ""),
            protocol_name=str(get("ProtocolName", "") or ""),
            sequence_name=str(get("SequenceName", "") or get("PulseSequenceName", "") or ""),
            scanning_sequence=scanning_sequence,
            sequence_variant=_as_tuple(get("SequenceVariant")),
            repetition_time=repetition_time,
            echo_time=echo_time,
            inversion_time=inversion_time,
            contrast_bolus_agent=str(get("ContrastBolusAgent", "") or ""),
            image_type=_as_tuple(get("ImageType")),
            mr_acquisition_type=str(get("MRAcquisitionType", "") or "").upper(),
            modality=str(get("Modality", "") or "").upper(),
            series_number=series_number,
            sop_class_uid=str(get("SOPClassUID", "")),
            instance_count=instance_count,
            number_of_frames=max(1, frames),
        )


def _enhanced_item(dataset: Any, keyword: str) -> Any:
    """The first item of ``keyword`` in the shared functional groups of an enhanced object, if any."""
    shared = dataset.get("SharedFunctionalGroupsSequence")
    if not shared:
        return None
    sequence = shared[0].get(keyword)
    return sequence[0] if sequence else None


@dataclass(frozen=True)
class Classification:
    """The role of one series with its confidence and the reasons for it."""

    series_instance_uid: str
    role: SequenceRole
    confidence: float
    reasons: tuple[str, ...]
    header: SeriesHeader | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class _Conditions:
    """One table of conditions (a rule's ``when`` or one entry of its ``any_of``)."""

    values: Mapping[str, Any]
    regexes: Mapping[str, re.Pattern[str]]

    def evidence(self, header: SeriesHeader) -> list[str] | None:
        """The matched values, one phrase per condition, or None if any condition fails."""
        found: list[str] = []
        for key, value in self.values.items():
            phrase = _check(key, value, self.regexes.get(key), header)
            if phrase is None:
                return None
            if phrase:
                found.append(phrase)
        return found


def _check(key: str, value: Any, regex: re.Pattern[str] | None, header: SeriesHeader) -> str | None:
    """'' or a phrase if the condition holds, None if it fails."""
    if key in _REGEX_CONDITIONS:
        attribute = _REGEX_CONDITIONS[key]
        if attribute == "description":
            text, label = header.description, "SeriesDescription" if header.series_description else "ProtocolName"
        elif attribute == "sequence_name":
            text, label = header.sequence_name.lower(), "SequenceName"
        else:
            text, label = _normalise(header.protocol_name), "ProtocolName"
        match = regex.search(text) if regex is not None else None
        if key.startswith("not_"):
            return "" if match is None else None
        return f"{label} {text!r} has {match.group(0)!r}" if match else None
    if key in _LIST_CONDITIONS:
        present = getattr(header, _LIST_CONDITIONS[key])
        if isinstance(present, str):
            present = (present,)
        hits = [item for item in value if item in present]
        label = {"image_type": "ImageType", "scanning_sequence": "ScanningSequence",
                 "sequence_variant": "SequenceVariant", "modality": "Modality"}[_LIST_CONDITIONS[key]]
        if key.endswith("_none"):
            if key == "modality_none" and not present:
                return None  # no Modality: unknown, not "something else"
            return None if hits else ""
        return f"{label} has {'/'.join(hits)}" if hits else None
    if key in _RANGE_CONDITIONS:
        actual = getattr(header, _RANGE_CONDITIONS[key])
        if actual is None:
            return None
        low, high = value
        if (low is not None and actual < low) or (high is not None and actual > high):
            return None
        return f"{key.upper()} {actual:g} ms in [{'' if low is None else low}, {'' if high is None else high}]"
    if key == "acquisition":
        return f"MRAcquisitionType {header.mr_acquisition_type}" if header.mr_acquisition_type == value else None
    if key == "contrast_agent":
        if header.has_contrast_agent != value:
            return None
        return f"ContrastBolusAgent {header.contrast_bolus_agent!r}" if value else ""
    raise AssertionError(f"unchecked condition {key}")  # the loader rejects unknown keys


@dataclass(frozen=True)
class Rule:
    """One scoring rule of the rules file."""

    name: str
    roles: tuple[SequenceRole, ...]
    score: float
    veto: bool
    why: str
    when: _Conditions
    any_of: tuple[_Conditions, ...]

    def evidence(self, header: SeriesHeader) -> list[str] | None:
        """What matched, or None if the rule does not apply to ``header``."""
        found = self.when.evidence(header)
        if found is None:
            return None
        if self.any_of:
            for alternative in self.any_of:
                extra = alternative.evidence(header)
                if extra is not None:
                    return found + extra
            return None
        return found


@dataclass(frozen=True)
class RequiredRoles:
    """Roles a study needs before it counts as complete (besides being stable)."""

    all_of: tuple[SequenceRole, ...]
    any_of: tuple[SequenceRole, ...]

    def missing(self, present: Iterable[SequenceRole]) -> list[str]:
        """What is missing, in words; empty when the requirement holds."""
        present = set(present)
        missing = [role.value for role in self.all_of if role not in present]
        if self.any_of and not present.intersection(self.any_of):
            missing.append("one of " + "/".join(role.value for role in self.any_of))
        return missing


@dataclass(frozen=True)
class RuleSet:
    """The validated classification rules (see ``rules.yaml`` for the language)."""

    rules: tuple[Rule, ...]
    required: RequiredRoles
    role_order: tuple[SequenceRole, ...]
    series_preference: tuple[str, ...]
    source: str = "<rules>"

    @classmethod
    def load(cls, path: Path | None = None) -> "RuleSet":
        """Read and validate a rules file (``None``: the shipped defaults).

        Raises
        ------
        RulesError
            If the file is missing, is not YAML, or a rule has an unknown key,
            an unknown role, a bad regex or a bad range; the message names it.
        """
        path = Path(path) if path is not None else DEFAULT_RULES_PATH
        if not path.is_file():
            raise RulesError(f"classification rules file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise RulesError(f"classification rules file {path} is not valid YAML: {exc}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<rules>") -> "RuleSet":
        """Validate rules given as a dict (the parsed YAML)."""
        if not isinstance(data, dict):
            raise RulesError(f"{source}: the rules file must hold a table with `rules`")
        patterns = data.get("patterns")
        try:
            parsed = _RulesFile.model_validate(
                data, context={"patterns": patterns if isinstance(patterns, dict) else {}}
            )
        except ValidationError as exc:
            raise RulesError("; ".join(_describe_error(error, data, source) for error in exc.errors())) from None
        return parsed.to_rule_set(data["rules"], source)

    # --- one series ---------------------------------------------------------------
    def classify(self, header: SeriesHeader) -> Classification:
        """The role of one series, with its confidence and reasons."""
        scores: dict[SequenceRole, float] = {}
        credited: dict[SequenceRole, list[Rule]] = {}
        reasons: list[str] = []
        vetoes: list[tuple[Rule, list[str]]] = []
        for rule in self.rules:
            evidence = rule.evidence(header)
            if evidence is None:
                continue
            if rule.veto:
                vetoes.append((rule, evidence))
                continue
            for role in rule.roles:
                scores[role] = scores.get(role, 0.0) + rule.score
                credited.setdefault(role, []).append(rule)
            target = "/".join(role.value for role in rule.roles)
            reasons.append(f"{rule.name} (+{rule.score:g} {target}): {rule.why}; {'; '.join(evidence) or 'no value'}")
        uid = header.series_instance_uid
        if vetoes:
            rule, evidence = max(vetoes, key=lambda item: item[0].score)
            lines = [f"{item.name} (veto, other): {item.why}; {'; '.join(found) or 'no value'}" for item, found in vetoes]
            if reasons:
                lines.append("ignored: " + " | ".join(reasons))
            return Classification(uid, SequenceRole.OTHER, round(min(1.0, rule.score), 2), tuple(lines), header)
        if not scores:
            return Classification(uid, SequenceRole.OTHER, 0.0, ("no rule matched; treated as other",), header)
        best = max(scores.values())
        leaders = [role for role in self.role_order if scores.get(role) == best]
        winner = leaders[0]
        if len(leaders) > 1:
            reasons.append(
                f"tie at {best:g} between {', '.join(role.value for role in leaders)}: "
                f"{winner.value} wins by role_order"
            )
        winner_rules = set(id(rule) for rule in credited[winner])
        competitor = 0.0
        for role, rules in credited.items():
            if role is winner:
                continue
            exclusive = sum(rule.score for rule in rules if id(rule) not in winner_rules)
            competitor = max(competitor, exclusive)
        confidence = min(1.0, best) * best / (best + competitor)
        return Classification(uid, winner, round(confidence, 2), tuple(reasons), header)

    # --- a whole study ----------------------------------------------------------------
    def classify_study(self, headers: Sequence[SeriesHeader]) -> list[Classification]:
        """Classify every series; when several claim one role, keep the preferred one.

        The losers become ``other`` and both sides record the decision in their
        reasons (``series_preference`` in the rules file gives the order).
        """
        results = [self.classify(header) for header in headers]
        by_role: dict[SequenceRole, list[int]] = {}
        for index, result in enumerate(results):
            if result.role is not SequenceRole.OTHER:
                by_role.setdefault(result.role, []).append(index)
        for role, indices in by_role.items():
            if len(indices) < 2:
                continue
            ranked = sorted(indices, key=lambda i: self._preference_key(results[i]), reverse=True)
            keep = ranked[0]
            kept = results[keep]
            for loser_index in ranked[1:]:
                loser = results[loser_index]
                why = self._why_preferred(kept, loser)
                results[loser_index] = replace(
                    loser,
                    role=SequenceRole.OTHER,
                    reasons=loser.reasons + (
                        f"also looks like {role.value} (confidence {loser.confidence:g}), but series "
                        f"{_series_label(kept)} is preferred: {why}; this series becomes other",
                    ),
                )
                kept = results[keep] = replace(
                    kept,
                    reasons=kept.reasons + (f"preferred over series {_series_label(loser)} for {role.value}: {why}",),
                )
        return results

    def _preference_key(self, result: Classification) -> tuple[float, ...]:
        header = result.header or SeriesHeader(result.series_instance_uid)
        values = {
            "acquisition_3d": 1.0 if header.mr_acquisition_type == "3D" else 0.0,
            "slices": float(header.slices),
            "series_number": float(header.series_number if header.series_number is not None else -1),
            "confidence": result.confidence,
        }
        return tuple(values[name] for name in self.series_preference)

    def _why_preferred(self, kept: Classification, loser: Classification) -> str:
        kept_key, loser_key = self._preference_key(kept), self._preference_key(loser)
        for name, a, b in zip(self.series_preference, kept_key, loser_key):
            if a != b:
                return {
                    "acquisition_3d": "3D over 2D",
                    "slices": f"more slices ({a:g} over {b:g})",
                    "series_number": f"later series number ({a:g} over {b:g})",
                    "confidence": f"higher confidence ({a:g} over {b:g})",
                }[name]
        return "equal on every preference; the first received is kept"


def _series_label(result: Classification) -> str:
    header = result.header
    if header is not None and header.series_number is not None:
        return f"{header.series_number} ({header.series_description or result.series_instance_uid})"
    return result.series_instance_uid


# --- the rules file, validated by pydantic models ------------------------------------------------


def _role(value: Any) -> SequenceRole:
    return value if isinstance(value, SequenceRole) else SequenceRole.parse(str(value))


def _non_empty_list(value: Any) -> Any:
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list")
    return value


def _upper_list(value: Any) -> Any:
    return tuple(str(item).upper() for item in _non_empty_list(value))


def _range(value: Any) -> Any:
    if not (isinstance(value, list) and len(value) == 2
            and all(item is None or isinstance(item, (int, float)) for item in value)):
        raise ValueError("must be [min, max] in ms (null for open)")
    return tuple(value)


def _regex(value: str, info: ValidationInfo) -> str:
    """Check that ``value`` (with its ``{pattern}`` names expanded) compiles; keep the text."""
    try:
        re.compile(_expand(value, (info.context or {}).get("patterns", {})), re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"is not a valid regex: {exc}") from None
    return value


Role = Annotated[SequenceRole, BeforeValidator(_role)]
Regex = Annotated[str, AfterValidator(_regex)]
ValueList = Annotated[tuple[str, ...], BeforeValidator(_upper_list)]
MillisecondRange = Annotated[tuple[float | None, float | None], BeforeValidator(_range)]


class _Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _ConditionsTable(_Forbid):
    """A rule's ``when`` or one entry of its ``any_of``: every given condition must hold."""

    description: Regex = None
    not_description: Regex = None
    protocol: Regex = None
    not_protocol: Regex = None
    sequence_name: Regex = None
    image_type_any: ValueList = None
    image_type_none: ValueList = None
    scanning_sequence_any: ValueList = None
    scanning_sequence_none: ValueList = None
    sequence_variant_any: ValueList = None
    modality_any: ValueList = None
    modality_none: ValueList = None
    tr: MillisecondRange = None
    te: MillisecondRange = None
    ti: MillisecondRange = None
    acquisition: Annotated[Literal["2D", "3D"], BeforeValidator(lambda value: str(value).upper())] = None
    contrast_agent: bool = Field(None, strict=True)

    def to_conditions(self, patterns: Mapping[str, str], order: Sequence[str]) -> _Conditions:
        """The runtime conditions, checked in the order the file lists them (the reasons keep it)."""
        keys = [key for key in order if key in self.model_fields_set]
        values = {key: getattr(self, key) for key in keys}
        regexes = {key: re.compile(_expand(values[key], patterns), re.IGNORECASE)
                   for key in keys if key in _REGEX_CONDITIONS}
        return _Conditions(values, regexes)


class _RuleEntry(_Forbid):
    name: Annotated[str, BeforeValidator(lambda value: value if value is None else str(value))] = Field(min_length=1)
    roles: Annotated[tuple[Role, ...], BeforeValidator(_non_empty_list)]
    score: float = Field(gt=0, le=2, strict=True)
    veto: bool = Field(False, strict=True)
    why: str | None = None
    when: _ConditionsTable | None = None
    any_of: list[_ConditionsTable] | None = None

    @model_validator(mode="after")
    def _check(self) -> "_RuleEntry":
        if self.veto and self.roles != (SequenceRole.OTHER,):
            raise ValueError("a veto rule must have roles [other]")
        if not (self.when and self.when.model_fields_set) and not self.any_of:
            raise ValueError("a rule needs at least one condition in `when` or `any_of`")
        return self

    def to_rule(self, raw: Mapping[str, Any], patterns: Mapping[str, str]) -> Rule:
        raw_when = raw.get("when") or {}
        raw_any = raw.get("any_of") or []
        when = (self.when or _ConditionsTable()).to_conditions(patterns, list(raw_when))
        any_of = tuple(table.to_conditions(patterns, list(order)) for table, order in zip(self.any_of or [], raw_any))
        return Rule(self.name, self.roles, float(self.score), self.veto, self.why or self.name, when, any_of)


class _RequiredRolesTable(_Forbid):
    all_of: tuple[Role, ...] = ()
    any_of: tuple[Role, ...] = ()


class _RulesFile(_Forbid):
    version: Literal[1] = 1
    required_roles: _RequiredRolesTable | None = _RequiredRolesTable(**DEFAULT_REQUIRED_ROLES)
    role_order: tuple[Role, ...] = tuple(DEFAULT_ROLE_ORDER)
    series_preference: tuple[Literal[SERIES_PREFERENCES], ...] | None = tuple(DEFAULT_SERIES_PREFERENCE)
    patterns: dict[str, str] | None = None
    rules: list[_RuleEntry]

    @model_validator(mode="before")
    @classmethod
    def _has_rules(cls, data: Any) -> Any:
        if isinstance(data, dict) and (not isinstance(data.get("rules"), list) or not data["rules"]):
            raise ValueError("`rules` must be a non-empty list of rule tables")
        return data

    @field_validator("role_order")
    @classmethod
    def _every_role(cls, value: tuple[SequenceRole, ...]) -> tuple[SequenceRole, ...]:
        missing = [role.value for role in SequenceRole if role not in value]
        if missing:
            raise ValueError(f"must list every role; missing {', '.join(missing)}")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> "_RulesFile":
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice")
            seen.add(rule.name)
        return self

    def to_rule_set(self, raw_rules: Sequence[Mapping[str, Any]], source: str) -> "RuleSet":
        """The runtime rules; ``raw_rules`` (the parsed YAML) gives the order of each rule's conditions."""
        patterns = self.patterns or {}
        required = self.required_roles or _RequiredRolesTable()
        rules = tuple(entry.to_rule(raw, patterns) for entry, raw in zip(self.rules, raw_rules))
        return RuleSet(rules, RequiredRoles(required.all_of, required.any_of), self.role_order,
                       tuple(self.series_preference or ()), source)


def _allowed_keys(loc: Sequence[Any]) -> list[str]:
    """The keys the table at ``loc`` allows (walking the models along the location)."""
    model: type[BaseModel] = _RulesFile
    for part in loc:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation
        candidates = [annotation, *get_args(annotation)]
        candidates += [inner for item in candidates for inner in get_args(item)]
        model = next(item for item in candidates if isinstance(item, type) and issubclass(item, BaseModel))
    return sorted(model.model_fields)


def _describe_error(error: Mapping[str, Any], data: Mapping[str, Any], source: str) -> str:
    """One pydantic error as ``file: rule 'name': key path message (got value)``."""
    loc = list(error.get("loc", ()))
    where = [source]
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        raw = data["rules"][loc[1]] if loc[1] < len(data["rules"]) else None
        name = raw.get("name") if isinstance(raw, dict) else None
        where.append(f"rule {str(name)!r}" if name is not None else f"rule #{loc[1] + 1}")
        loc = loc[2:]
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    message = str(error.get("msg", "is invalid")).removeprefix("Value error, ").removeprefix("Input ")
    value = error.get("input")
    if error.get("type") == "extra_forbidden":
        parent, key = path.rpartition(".")[0] or path.rpartition("[")[0], loc[-1]
        full = list(error["loc"])[:-1]
        kind = "condition" if full and (full[-1] == "when" or "any_of" in full) else "key"
        where += [parent] if parent and parent != str(key) else []
        text = f"unknown {kind} {key!r}; allowed: {', '.join(_allowed_keys(full))}"
    elif error.get("type") == "missing":
        text = f"{path} is required"
    elif error.get("type") in ("model_type", "dict_type"):
        text = f"{path} must be a table" if path else "must be a table"
    else:
        text = f"{path} {message}" if path else message
    if error.get("type") != "missing" and not isinstance(value, dict):
        shown = repr(value)
        text += f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"
    return ": ".join(where + [text])


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(text: str, patterns: Mapping[str, str]) -> str:
    """Replace each ``{name}`` with the named pattern (in a non-capturing group)."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in patterns:
            raise ValueError(f"uses unknown pattern {{{name}}}; known: {', '.join(sorted(patterns)) or 'none'}")
        return f"(?:{patterns[name]})"

    return _PLACEHOLDER.sub(substitute, text)
