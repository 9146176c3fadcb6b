"""The networks themselves (torch modules), one module per architecture family; the registry entries that describe them live one level up."""
