"""The dock's keyboard shortcuts do not clash with napari's default ones (no viewer)."""

from __future__ import annotations


def test_shortcuts_are_not_napari_defaults():
    from napari.utils.key_bindings import coerce_keybinding
    from napari.utils.shortcuts import _default_shortcuts

    from napari_casam._widget import SHORTCUTS

    taken = {coerce_keybinding(k) for keys in _default_shortcuts.values() for k in keys}
    ours = {coerce_keybinding(k): action for k, action in SHORTCUTS.items()}
    assert not set(ours) & taken, {str(k): a for k, a in ours.items() if k in taken}


def test_shortcuts_are_bound_to_existing_actions():
    from napari_casam._widget import SHORTCUTS, CasamWidget

    for action in SHORTCUTS.values():
        assert callable(getattr(CasamWidget, action))
