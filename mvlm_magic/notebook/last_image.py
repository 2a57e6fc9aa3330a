"""Remember the last PIL image the notebook displayed, for `%%mvlm_ask` with no image named.

Both ways a picture gets shown pass through the shell's display formatter: `display(img)` and a
cell whose value is `img` (the displayhook). Registering a printer for PIL images on the
`image/png` formatter sees both, without patching any method; it returns exactly what Pillow's own
`_repr_png_` returns, so pictures look the same as without the extension. `on_show` hears of each picture
shown (the magics prepare it for its question: Engine.prepare).
"""

from __future__ import annotations

PIL_IMAGE = ("PIL.Image", "Image")


class LastImage:
    def __init__(self, on_show=None):
        self.image = None  # the last PIL image displayed (kept alive, as a notebook keeps showing it)
        self.on_show = on_show  # called with each picture displayed; must return at once
        self._formatter = None
        self._previous = None

    def install(self, shell) -> None:
        self._formatter = shell.display_formatter.formatters["image/png"]
        self._previous = self._formatter.for_type_by_name(*PIL_IMAGE, self._format)

    def uninstall(self) -> None:
        if self._formatter is None:
            return
        if self._registered():  # leave a printer registered after ours in place
            self._formatter.pop(".".join(PIL_IMAGE), None)
            if self._previous is not None:
                self._formatter.for_type_by_name(*PIL_IMAGE, self._previous)
        self._formatter = None

    def _registered(self) -> bool:
        try:
            return self._formatter.lookup_by_type(".".join(PIL_IMAGE)) == self._format
        except KeyError:
            return False

    def _format(self, image):
        if self.on_show is not None:
            self.on_show(image)
        self.image = image
        return self._previous(image) if self._previous is not None else image._repr_png_()
