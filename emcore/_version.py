__version__ = "0.1.0.dev0"
# the name on PyPI (the import name stays emcore, as scikit-learn's is sklearn)
DISTRIBUTION = "emcore-learn"
