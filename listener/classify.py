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
from typing import Any

import yaml

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
_OTHER_CONDITIONS = {"acquisition", "contrast_agent"}
CONDITION_KEYS = frozenset(_LIST_CONDITIONS) | frozenset(_REGEX_CONDITIONS) | frozenset(_RANGE_CONDITIONS) | _OTHER_CONDITIONS
SERIES_PREFERENCES = ("acquisition_3d", "slices", "series_number", "confidence")
# used when a rules file leaves these keys out
DEFAULT_REQUIRED_ROLES = {"all_of": ["FLAIR"], "any_of": ["T1ce", "T1", "T2"]}
DEFAULT_ROLE_ORDER = ["FLAIR", "T1ce", "T1", "T2", "other"]
DEFAULT_SERIES_PREFERENCE = ["acquisition_3d", "slices", "series_number"]
_RULE_KEYS = {"name", "roles", "score", "veto", "why", "when", "any_of"}
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
        unknown = set(data) - {"version", "required_roles", "role_order", "series_preference", "patterns", "rules"}
        if unknown:
            raise RulesError(f"{source}: unknown top-level key(s) {', '.join(sorted(unknown))}")
        if data.get("version", 1) != 1:
            raise RulesError(f"{source}: version {data.get('version')!r} is not supported; use 1")
        patterns = data.get("patterns") or {}
        if not isinstance(patterns, dict):
            raise RulesError(f"{source}: `patterns` must be a table of name: regex")
        required = data.get("required_roles", DEFAULT_REQUIRED_ROLES) or {}
        if not isinstance(required, dict) or set(required) - {"all_of", "any_of"}:
            raise RulesError(f"{source}: `required_roles` takes `all_of` and `any_of` lists of roles")
        required_roles = RequiredRoles(
            all_of=tuple(_role(item, source, "required_roles.all_of") for item in required.get("all_of") or ()),
            any_of=tuple(_role(item, source, "required_roles.any_of") for item in required.get("any_of") or ()),
        )
        role_order = tuple(_role(item, source, "role_order") for item in data.get("role_order", DEFAULT_ROLE_ORDER))
        missing_roles = [role.value for role in SequenceRole if role not in role_order]
        if missing_roles:
            raise RulesError(f"{source}: role_order must list every role; missing {', '.join(missing_roles)}")
        preference = tuple(data.get("series_preference", DEFAULT_SERIES_PREFERENCE) or ())
        bad = [item for item in preference if item not in SERIES_PREFERENCES]
        if bad:
            raise RulesError(
                f"{source}: series_preference {bad[0]!r} is unknown; use {', '.join(SERIES_PREFERENCES)}"
            )
        raw_rules = data.get("rules")
        if not isinstance(raw_rules, list) or not raw_rules:
            raise RulesError(f"{source}: `rules` must be a non-empty list")
        rules = []
        names = set()
        for index, raw in enumerate(raw_rules):
            rule = _parse_rule(raw, index, patterns, source)
            if rule.name in names:
                raise RulesError(f"{source}: rule name {rule.name!r} is used twice")
            names.add(rule.name)
            rules.append(rule)
        return cls(tuple(rules), required_roles, role_order, preference, source)

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


def _role(value: Any, source: str, where: str) -> SequenceRole:
    try:
        return SequenceRole.parse(str(value))
    except ValueError as exc:
        raise RulesError(f"{source}: {where}: {exc}") from None


def _parse_rule(raw: Any, index: int, patterns: Mapping[str, str], source: str) -> Rule:
    if not isinstance(raw, dict):
        raise RulesError(f"{source}: rule #{index + 1} must be a table")
    name = str(raw.get("name") or f"#{index + 1}")
    where = f"{source}: rule {name!r}"
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise RulesError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_RULE_KEYS))}")
    if "name" not in raw:
        raise RulesError(f"{where}: every rule needs a `name`")
    roles = raw.get("roles")
    if not isinstance(roles, list) or not roles:
        raise RulesError(f"{where}: `roles` must be a non-empty list of roles")
    parsed_roles = tuple(_role(item, source, f"rule {name!r} roles") for item in roles)
    score = raw.get("score")
    if not isinstance(score, (int, float)) or isinstance(score, bool) or not 0 < score <= 2:
        raise RulesError(f"{where}: score {score!r} must be a number in (0, 2]")
    veto = raw.get("veto", False)
    if not isinstance(veto, bool):
        raise RulesError(f"{where}: veto must be true or false")
    if veto and parsed_roles != (SequenceRole.OTHER,):
        raise RulesError(f"{where}: a veto rule must have roles [other]")
    when = _parse_conditions(raw.get("when") or {}, patterns, f"{where} when")
    any_of_raw = raw.get("any_of") or []
    if not isinstance(any_of_raw, list):
        raise RulesError(f"{where}: any_of must be a list of condition tables")
    any_of = tuple(_parse_conditions(item, patterns, f"{where} any_of") for item in any_of_raw)
    if not when.values and not any_of:
        raise RulesError(f"{where}: a rule needs at least one condition")
    return Rule(name, parsed_roles, float(score), veto, str(raw.get("why") or name), when, any_of)


def _parse_conditions(raw: Any, patterns: Mapping[str, str], where: str) -> _Conditions:
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: conditions must be a table")
    values: dict[str, Any] = {}
    regexes: dict[str, re.Pattern[str]] = {}
    for key, value in raw.items():
        if key not in CONDITION_KEYS:
            raise RulesError(f"{where}: unknown condition {key!r}; allowed: {', '.join(sorted(CONDITION_KEYS))}")
        if key in _REGEX_CONDITIONS:
            text = _expand(str(value), patterns, where, key)
            try:
                regexes[key] = re.compile(text, re.IGNORECASE)
            except re.error as exc:
                raise RulesError(f"{where}: {key} {value!r} is not a valid regex: {exc}") from None
            values[key] = value
        elif key in _LIST_CONDITIONS:
            if not isinstance(value, list) or not value:
                raise RulesError(f"{where}: {key} must be a non-empty list")
            values[key] = tuple(str(item).upper() for item in value)
        elif key in _RANGE_CONDITIONS:
            if not (isinstance(value, list) and len(value) == 2
                    and all(item is None or isinstance(item, (int, float)) for item in value)):
                raise RulesError(f"{where}: {key} must be [min, max] in ms (null for open), not {value!r}")
            values[key] = tuple(value)
        elif key == "acquisition":
            if str(value).upper() not in ("2D", "3D"):
                raise RulesError(f"{where}: acquisition must be 2D or 3D, not {value!r}")
            values[key] = str(value).upper()
        elif key == "contrast_agent":
            if not isinstance(value, bool):
                raise RulesError(f"{where}: contrast_agent must be true or false")
            values[key] = value
    return _Conditions(values, regexes)


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(text: str, patterns: Mapping[str, str], where: str, key: str) -> str:
    """Replace each ``{name}`` with the named pattern (in a non-capturing group)."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in patterns:
            raise RulesError(f"{where}: {key} uses unknown pattern {{{name}}}; known: {', '.join(sorted(patterns))}")
        return f"(?:{patterns[name]})"

    return _PLACEHOLDER.sub(substitute, text)
