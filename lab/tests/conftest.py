"""The lab's tests: the lab's folders on the import path, and the product's fixtures (tests/conftest.py) shared."""

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for folder in ("", "lab", os.path.join("lab", "speed"), os.path.join("lab", "peers"), os.path.join("lab", "gpu")):
    sys.path.insert(0, os.path.join(ROOT, folder))

_spec = importlib.util.spec_from_file_location("product_conftest", os.path.join(ROOT, "tests", "conftest.py"))
_product = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_product)
globals().update({name: value for name, value in vars(_product).items() if not name.startswith("__")})
