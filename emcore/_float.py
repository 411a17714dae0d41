"""Facts of float64 (and float32) that every derived rounding tolerance uses (a leaf module:
it imports nothing of emcore, so any module may use it; the plugin API re-exports
``UNIT_ROUNDOFF`` for plugins)."""

#: u = 2**-53, the unit roundoff of float64 (fl(a op b) = (a op b)(1 + delta),
#: |delta| <= u): the one constant every derived rounding tolerance in emcore uses.
UNIT_ROUNDOFF = 2.0 ** -53

#: u32 = 2**-24, the unit roundoff of float32: the bound's u for the quantities a
#: kernel computes in float32 on float32 data (docs/elbo_chain.md#float32).
FLOAT32_UNIT_ROUNDOFF = 2.0 ** -24
