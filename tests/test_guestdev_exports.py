"""The guest device's façade exports what it says it does, and the guest
package exports its TEE subsystem."""

import stubdom.guest as guest
import stubdom.guestdev as guestdev


def test_guestdev_facade_exports():
    assert sorted(guestdev.__all__) == guestdev.__all__
    for name in guestdev.__all__:
        assert getattr(guestdev, name) is not None, name


def test_guest_exports_the_tee_subsystem():
    for name in ("TeeSubsystem", "TeeContext", "TeeShm", "SuppQueue", "MmTable", "UserMemory", "Caller",
                 "TeeErrno", "SupplicantPort"):
        assert name in guest.__all__ and getattr(guest, name) is not None, name
