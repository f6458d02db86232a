from uronode.dicomfile import is_valid_uid
from uronode.uids import derive_uid


def test_derived_uids_are_valid_stable_and_distinct() -> None:
    a = derive_uid("1.2.3", "stone-unet", "1.0", "seg")
    assert a == derive_uid("1.2.3", "stone-unet", "1.0", "seg")
    assert is_valid_uid(a) and a.startswith("2.25.") and len(a) <= 44
    others = {
        derive_uid("1.2.3", "stone-unet", "1.1", "seg"),
        derive_uid("1.2.3", "stone-unet", "1.0", "sr"),
        derive_uid("1.2.4", "stone-unet", "1.0", "seg"),
        derive_uid("1.2.3stone-unet", "1.0", "seg"),
    }
    assert a not in others and len(others) == 4
