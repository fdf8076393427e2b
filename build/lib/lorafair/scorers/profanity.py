"""``profanity-svm``: alt-profanity-check, a TF-IDF + linear SVM profanity classifier (one label).

The package loads its model when imported (about a second, mostly scikit-learn), so it is imported
only when this scorer is built.
"""

from __future__ import annotations

import numpy as np

from lorafair.errors import UserError
from lorafair.packages import package_dir, package_version
from lorafair.scorers.base import Scorer, files_hash

INSTALL = "pip install alt-profanity-check==1.9.1"


class ProfanitySVM(Scorer):
    """One label, ``profanity``: the classifier's probability that a text is profane."""

    def __init__(self) -> None:
        data = package_dir("profanity_check", INSTALL) / "data"
        files = [data / "model.joblib", data / "vectorizer.joblib"]
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise UserError(f"{missing[0]} is missing; reinstall with `{INSTALL}`")
        import profanity_check

        self._predict_prob = profanity_check.predict_prob
        self.name, self.labels, self.primary = "profanity-svm", ["profanity"], "profanity"
        self.version = package_version("alt-profanity-check")
        self.weights_hash = files_hash(files)

    def _score(self, texts: list[str]) -> dict[str, np.ndarray]:
        return {"profanity": np.asarray(self._predict_prob(texts), dtype=np.float64)}
