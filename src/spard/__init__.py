"""spard: keep a safety-aligned LLM safe while it is fine-tuned on possibly poisoned data.

Implements SPARD (ICML 2026): SPAG, a safety-projected alternating optimiser, and RD-DPP, a
relevance-diversity selection of the safety data SPAG uses.
"""

__version__ = "0.1.0"
