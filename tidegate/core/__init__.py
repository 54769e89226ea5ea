"""The domain's base, which imports no domain package: who is asking (`Principal`, with its
key's `KeyRestrictions`), what can be granted (`Scope`, roles, presets), and which rows
(`RowFilter`). Every package may import it; what a principal may *do* is decided in
`tidegate.access` (`authorize`)."""
