"""
K-means
=======

Placeholder.
"""
import emcore
print(emcore.__version__)
