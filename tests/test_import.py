import subprocess
import sys

import infernb


def test_import_is_light_and_says_where_it_runs():
    code = ("import sys, infernb; print(infernb.device_info()); "
            "print(sorted(m for m in ('cupy', 'plotly', 'ipywidgets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "infernb device:" in out and "kernels compile for sm_" in out
    assert out.strip().endswith("[]"), out


def test_device_info_fields():
    info = infernb.device_info()
    assert info.arch.startswith("sm_") and info.sm_count > 0
    assert str(info).startswith("infernb device:")
