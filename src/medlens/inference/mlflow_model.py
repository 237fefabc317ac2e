"""A medlens bundle as an MLflow pyfunc model ("models from code": MLflow stores and runs this file).

Logged by :func:`medlens.engine.tracking.log_bundle_model` with the bundle folder as the artifact ``bundle``::

    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    model.predict(["a.png", "b.dcm"])          # or a DataFrame with a ``path`` (or first) column

returns the table ``medlens predict --out`` writes (source, probabilities, per finding threshold and
decision, predicted labels, error), as a pandas DataFrame.
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

#: DataFrame columns read as image paths, in order (else the first column)
PATH_COLUMNS = ("path", "image", "source", "file")


def input_paths(model_input: Any) -> list[str]:
    """Image paths from a list, a single path, a Series or a DataFrame (``path``/``image``/... or first column).

    Example:
        >>> input_paths(["a.png", "b.png"])
        ['a.png', 'b.png']
    """
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        col = next((c for c in PATH_COLUMNS if c in model_input.columns), model_input.columns[0])
        return [str(x) for x in model_input[col].tolist()]
    if isinstance(model_input, pd.Series):
        return [str(x) for x in model_input.tolist()]
    if isinstance(model_input, (str, bytes)) or not hasattr(model_input, "__iter__"):
        return [str(model_input)]
    return [str(x) for x in model_input]


class BundleModel(PythonModel):
    """pyfunc wrapper around :class:`medlens.inference.Predictor` (the torch runtime, bundle thresholds)."""

    # no type hints on the MLflow hooks: MLflow would read them as an input schema
    def load_context(self, context):  # noqa: ANN001
        from medlens.inference import Predictor

        self.predictor = Predictor.from_bundle(context.artifacts["bundle"])

    def predict(self, context, model_input, params=None):  # noqa: ANN001
        import pandas as pd

        from medlens.inference.table import prediction_rows

        preds = self.predictor.predict(input_paths(model_input))
        header, rows = prediction_rows(preds, self.predictor.manifest)
        return pd.DataFrame(rows, columns=header)


mlflow.models.set_model(BundleModel())
