"""Compiled hot loops of emcore (private). See emcore/kernel.pxd for the public
kernel interface and emcore/engine.py for the logic around these loops."""
