"""Harmfulness judges behind one interface; build one from a spec with :func:`make_judge`.

Specs: ``keyword`` (the refusal rule; ``keyword:v1`` is the superseded rule, for measuring it);
``probe:DIR`` (TF-IDF probe of the response); ``harm:DIR`` (the pair classifier for small-model
outputs, :mod:`spard.evaluation.judges.harm`); ``llm`` or ``llm:MODEL`` (OpenAI-compatible endpoint, settings in
:class:`LLMJudgeConfig`); ``classifier:ID``.
"""

from __future__ import annotations

from spard.evaluation.judges.base import Judge, Verdict, agreement, attack_success_rate
from spard.evaluation.judges.keyword import RULE_VERSION, KeywordJudge
from spard.evaluation.judges.llm import LLMJudge, LLMJudgeConfig


def make_judge(spec: str, llm_config: LLMJudgeConfig | None = None) -> Judge:
    kind, _, arg = spec.partition(":")
    if kind == "keyword":
        if arg == "v1":
            from spard.evaluation.judges.keyword import KeywordJudgeV1

            return KeywordJudgeV1()
        if arg not in ("", f"v{RULE_VERSION}"):
            raise ValueError(f"keyword rule {arg!r}: use keyword (rule v{RULE_VERSION}) or keyword:v1 (superseded)")
        return KeywordJudge()
    if kind == "probe":
        from spard.evaluation.judges.probe import ProbeJudge

        if not arg:
            raise ValueError("judge 'probe' needs a directory: probe:DIR (fit one with `spard judge fit`)")
        return ProbeJudge(arg)
    if kind == "harm":
        from spard.evaluation.judges.harm import HarmJudge

        if not arg:
            raise ValueError("judge 'harm' needs a directory: harm:DIR (fit one with `spard judge fit --kind harm`)")
        return HarmJudge(arg)
    if kind == "llm":
        from dataclasses import replace

        cfg = llm_config or LLMJudgeConfig()
        return LLMJudge(replace(cfg, model=arg) if arg else cfg)
    if kind == "classifier":
        from spard.evaluation.judges.classifier import ClassifierJudge

        if not arg:
            raise ValueError("judge 'classifier' needs a model: classifier:PATH_OR_ID")
        return ClassifierJudge(arg)
    raise ValueError(f"unknown judge {spec!r}: use keyword, probe:DIR, harm:DIR, llm[:MODEL] or classifier:ID")


def judge_fingerprint(spec: str, llm_config: LLMJudgeConfig | None = None) -> dict:
    """The fingerprint the judge ``spec`` would have (:attr:`Judge.fingerprint`), without loading a model
    or needing an API key: what an evaluation's ``eval_key`` records for it."""
    kind, _, arg = spec.partition(":")
    if kind == "keyword":
        return make_judge(spec).fingerprint  # no model behind it
    if kind == "probe":
        from spard.evaluation.judges.probe import probe_fingerprint

        return probe_fingerprint(arg)
    if kind == "harm":
        from spard.evaluation.judges.harm import harm_fingerprint

        return harm_fingerprint(arg)
    if kind == "llm":
        from dataclasses import replace

        from spard.evaluation.judges.llm import llm_fingerprint

        cfg = llm_config or LLMJudgeConfig()
        return llm_fingerprint(replace(cfg, model=arg) if arg else cfg)
    return {"judge": spec}


__all__ = ["Judge", "KeywordJudge", "LLMJudge", "LLMJudgeConfig", "Verdict", "agreement", "attack_success_rate", "judge_fingerprint",
           "make_judge"]
