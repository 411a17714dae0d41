"""emcore's first-party plugins (installed as ``emcore.plugins``).

They are written only against emcore's public plugin API
(:mod:`emcore.plugin_api`, ``emcore/kernel.pxd``, ``emcore/blas.pxd``) and are
registered through the ``emcore`` entry-point group, the same door a third-party
plugin uses.
"""
