"""The class-activation-map methods a classifier offers and what each map shows (no torch: the ONNX server lists them)."""

from __future__ import annotations

#: method name -> pytorch-grad-cam class name
CAM_CLASSES: dict[str, str] = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "xgradcam": "XGradCAM",
    "eigencam": "EigenCAM",
}


def list_methods() -> list[str]:
    """Names accepted by ``explain(method=...)`` for classifiers (anomaly bundles use ``error_map``).

    Example:
        >>> "gradcam" in list_methods()
        True
    """
    names = list(CAM_CLASSES)
    return sorted(names, key=lambda n: (n != "gradcam", n))  # gradcam first: the default


#: what each method's map shows, for report captions (true to the method: EigenCAM is class-agnostic)
CAPTIONS = {
    "gradcam": "Warm colours mark the regions whose activations most increased the model's score for the label "
               "(gradient-weighted class activation map).",
    "gradcam++": "Warm colours mark the regions whose activations most increased the model's score for the label "
                 "(Grad-CAM++, which weights several instances of a finding more evenly).",
    "hirescam": "Warm colours mark where the element-wise product of activations and gradients for the label is "
                "largest (HiResCAM).",
    "layercam": "Warm colours mark locations with positive gradients for the label, weighted per pixel (LayerCAM).",
    "xgradcam": "Warm colours mark the regions whose activations most increased the model's score for the label "
                "(axiom-based Grad-CAM).",
    "eigencam": "Warm colours mark the dominant pattern of the network's last feature maps (first principal "
                "component). EigenCAM uses no gradients and is the same for every label: it shows what the "
                "network attends to, not evidence for one finding.",
}
