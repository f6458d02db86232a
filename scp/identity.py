"""The node's application entities, each telling its peers what it is.

Every association the node makes or accepts carries uronode's own Implementation
Class UID and Implementation Version Name (PS3.7 D.3.3.2), the ones its stored
files carry in their File Meta (:mod:`uronode.dicomfile`), not pynetdicom's: a
PACS administrator reading an association log, or a peer that keys a
workaround on the implementation, sees the product and its version.
"""

from __future__ import annotations

from pynetdicom import AE

from uronode.dicomfile import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME


def node_ae(ae_title: str) -> AE:
    """A pynetdicom AE titled ``ae_title`` that identifies itself as uronode."""
    ae = AE(ae_title=ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    return ae
