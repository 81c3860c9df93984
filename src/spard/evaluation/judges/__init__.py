"""Harmfulness judges behind one interface; build one from a spec with :func:`make_judge`.

Specs: ``keyword`` (the refusal rule; ``keyword:v1`` is the superseded rule, for measuring it);
``probe:DIR`` (TF-IDF probe of the response); ``harm:DIR`` (the pair classifier for small-model
outputs, :mod:`spard.evaluation.judges.harm`); ``stacked:DIR`` (a logistic judge over refusal, content
and shape signals fit on human labels, :mod:`spard.evaluation.judges.stacked`); ``llm`` or ``llm:MODEL`` (OpenAI-compatible endpoint, settings in
:class:`LLMJudgeConfig`); ``classifier:ID``.
"""

from __future__ import annotations

from collections.abc import Callable

from spard.evaluation.judges.base import Judge, Verdict, agreement, attack_success_rate
from spard.evaluation.judges.keyword import RULE_VERSION, KeywordJudge
from spard.evaluation.judges.llm import LLMJudge, LLMJudgeConfig
from spard.registry import Registry

#: judge kinds -> factories ``(argument after the colon, LLM settings) -> Judge``. A factory may carry a
#: ``fingerprint(arg, llm)`` attribute that gives the judge's fingerprint without loading it.
JUDGES: Registry[Callable[[str, LLMJudgeConfig], Judge]] = Registry("judge")


def judge_kind(name: str, fingerprint: Callable[[str, LLMJudgeConfig], dict] | None = None) -> Callable:
    """Decorator: register a judge factory under ``name`` (the ``KIND`` of ``KIND:ARG`` specs)."""

    def wrap(factory: Callable[[str, LLMJudgeConfig], Judge]) -> Callable[[str, LLMJudgeConfig], Judge]:
        if fingerprint is not None:
            factory.fingerprint = fingerprint  # type: ignore[attr-defined]
        return JUDGES.add(name, factory)

    return wrap


def _llm_settings(arg: str, llm: LLMJudgeConfig) -> LLMJudgeConfig:
    from dataclasses import replace

    return replace(llm, model=arg) if arg else llm


def _keyword_fingerprint(arg: str, llm: LLMJudgeConfig) -> dict:
    return _keyword(arg, llm).fingerprint  # no model behind it


def _probe_fingerprint(arg: str, llm: LLMJudgeConfig) -> dict:
    from spard.evaluation.judges.probe import probe_fingerprint

    return probe_fingerprint(arg)


def _harm_fingerprint(arg: str, llm: LLMJudgeConfig) -> dict:
    from spard.evaluation.judges.harm import harm_fingerprint

    return harm_fingerprint(arg)


def _stacked_fingerprint(arg: str, llm: LLMJudgeConfig) -> dict:
    from spard.evaluation.judges.stacked import stacked_fingerprint

    return stacked_fingerprint(arg)


def _llm_fingerprint(arg: str, llm: LLMJudgeConfig) -> dict:
    from spard.evaluation.judges.llm import llm_fingerprint

    return llm_fingerprint(_llm_settings(arg, llm))


@judge_kind("keyword", _keyword_fingerprint)
def _keyword(arg: str, llm: LLMJudgeConfig) -> Judge:
    """The refusal rule (measures refusal: its rate is a non-refusal rate); keyword:v1 is the superseded rule."""
    if arg == "v1":
        from spard.evaluation.judges.keyword import KeywordJudgeV1

        return KeywordJudgeV1()
    if arg not in ("", f"v{RULE_VERSION}"):
        raise ValueError(f"keyword rule {arg!r}: use keyword (rule v{RULE_VERSION}) or keyword:v1 (superseded)")
    return KeywordJudge()


@judge_kind("probe", _probe_fingerprint)
def _probe(arg: str, llm: LLMJudgeConfig) -> Judge:
    """probe:DIR, a TF-IDF / embedding logistic probe of the response (`spard judge fit`)."""
    from spard.evaluation.judges.probe import ProbeJudge

    if not arg:
        raise ValueError("judge 'probe' needs a directory: probe:DIR (fit one with `spard judge fit`)")
    return ProbeJudge(arg)


@judge_kind("harm", _harm_fingerprint)
def _harm(arg: str, llm: LLMJudgeConfig) -> Judge:
    """harm:DIR, a cross-encoder of prompt and response for small-model outputs (`spard judge fit --kind harm`)."""
    from spard.evaluation.judges.harm import HarmJudge

    if not arg:
        raise ValueError("judge 'harm' needs a directory: harm:DIR (fit one with `spard judge fit --kind harm`)")
    return HarmJudge(arg)


@judge_kind("stacked", _stacked_fingerprint)
def _stacked(arg: str, llm: LLMJudgeConfig) -> Judge:
    """stacked:DIR, a logistic judge over refusal, content and shape signals fit on human labels (`spard judge fit --kind stacked`)."""
    from spard.evaluation.judges.stacked import StackedJudge

    if not arg:
        raise ValueError("judge 'stacked' needs a directory: stacked:DIR (fit one with `spard judge fit --kind stacked`)")
    return StackedJudge(arg)


@judge_kind("llm", _llm_fingerprint)
def _llm(arg: str, llm: LLMJudgeConfig) -> Judge:
    """llm[:MODEL], an OpenAI-compatible chat model with the paper's 1-5 rubric (harmful iff score >= 3)."""
    return LLMJudge(_llm_settings(arg, llm))


@judge_kind("classifier")
def _classifier(arg: str, llm: LLMJudgeConfig) -> Judge:
    """classifier:ID, a Hugging Face sequence classifier or a Llama-Guard-style moderator."""
    from spard.evaluation.judges.classifier import ClassifierJudge

    if not arg:
        raise ValueError("judge 'classifier' needs a model: classifier:PATH_OR_ID")
    return ClassifierJudge(arg)


def make_judge(spec: str, llm_config: LLMJudgeConfig | None = None) -> Judge:
    """The judge a spec names: ``KIND`` or ``KIND:ARG`` with KIND registered in :data:`JUDGES`."""
    kind, _, arg = spec.partition(":")
    if kind not in JUDGES:
        raise ValueError(f"unknown judge {spec!r}; choose from {', '.join(f'{k}[:ARG]' for k in JUDGES)}")
    return JUDGES.get(kind)(arg, llm_config or LLMJudgeConfig())


def judge_fingerprint(spec: str, llm_config: LLMJudgeConfig | None = None) -> dict:
    """The fingerprint the judge ``spec`` would have (:attr:`Judge.fingerprint`), without loading a model
    or needing an API key: what an evaluation's ``eval_key`` records for it. A kind registered without a
    fingerprint function is recorded by its spec."""
    kind, _, arg = spec.partition(":")
    fingerprint = getattr(JUDGES.get(kind), "fingerprint", None) if kind in JUDGES else None
    return fingerprint(arg, llm_config or LLMJudgeConfig()) if fingerprint else {"judge": spec}


__all__ = ["JUDGES", "Judge", "judge_kind", "KeywordJudge", "LLMJudge", "LLMJudgeConfig", "Verdict", "agreement", "attack_success_rate", "judge_fingerprint",
           "make_judge"]
