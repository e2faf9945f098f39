"""ovs: open-vocabulary semantic segmentation learned from image-caption pairs alone.

The package is a side-effect-free library: importing it starts no Ray cluster, opens no
MLflow run and parses no command line. Entry points live in ``pipelines/``.
"""

__version__ = "0.1.0"
