"""Request bodies of the contribution endpoints, valid unless overridden."""

from tests.ingest.conftest import b64, crop
from tests.utils.images import make_png

INSTALL = "install-0001"


def knowledge_body(seed: int = 0, **overrides) -> dict:
    body = {
        "install_id": INSTALL,
        "phash": "0123456789abcdef",
        "crop_png_b64": crop(seed),
        "item_name": "Phaser Array",
        "wrong_name": "Phaser Beam",
        "confirmed": True,
        "warp_version": "2.4.1",
        "timestamp": "2026-11-22T10:00:00",
    }
    return body | overrides


def bulk_body(items: list[dict], install_id: str = INSTALL) -> dict:
    return {"install_id": install_id, "items": items}


def icon_item(seed: int = 0, **overrides) -> dict:
    return {
        "slot": "Fore Weapon",
        "name": "Phaser Array",
        "crop_png_b64": crop(seed),
        "ml_name": "Phaser",
    } | overrides


def grid(**overrides) -> dict:
    slot = {"x0_rel": 0.1, "y_rel": 0.2, "w_rel": 0.05, "h_rel": 0.05, "step_rel": 0.06, "count": 4}
    return {
        "build_type": "SPACE_EQ",
        "aspect": 1.777,
        "resolution": "1920x1080",
        "slots": {"Fore Weapon": slot, "Aft Weapon": slot, "Deflector": slot},
    } | overrides


def screen_types_body(seed: int, screen_type: str = "TRAITS") -> dict:
    return {
        "install_id": INSTALL,
        "screen_type": screen_type,
        "items": [{"png_b64": b64(make_png(96, 96, seed))}],
    }


ENDPOINT_BODIES = {
    "/contribute": lambda i: knowledge_body(i, item_name=f"Item {i}"),
    "/contribute/bulk-crops": lambda i: bulk_body([icon_item(i)]),
    "/v1/contributions/crops": lambda i: bulk_body([icon_item(i)]),
    "/upload/screen-types": screen_types_body,
    "/v1/contributions/screen-types": screen_types_body,
    "/upload/anchors": lambda i: {"install_id": INSTALL, "grids": [grid(resolution=f"{i}")]},
    "/v1/contributions/anchors": lambda i: {"install_id": INSTALL, "grids": [grid(resolution=f"{i}")]},
}
