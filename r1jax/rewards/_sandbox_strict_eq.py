"""Strict `==` for the code sandbox's test asserts (loaded by `_sandbox_child.py`).

`make_strict_eq()` builds the comparison; `compile_code(..., eq_name)` compiles test code
with every two-operand `assert x == y` rewritten to call it, so that an object whose
`__eq__` always returns True, an int subclass equal to everything, or either inside a
list, does not pass a test. Everything the comparison uses is bound when it is built
(before untrusted code runs): patching `builtins` or this module afterwards changes nothing.

Standard library only, and few modules (this runs in every sandboxed child); it must not
import r1jax.
"""

import _ast

def make_strict_eq():
  """`a == b` for test asserts, comparing values, not disguises.

  Each object on both sides, inside containers too, is judged by its exact type, read
  through C-level descriptors (a metaclass cannot lie about them) and C-level iteration
  (an overridden `__iter__` cannot hide items):
  * plain values: objects whose `__eq__` is C code (builtin and extension types, and
    subclasses that do not override `__eq__`, e.g. a namedtuple), and lists, tuples,
    deques, dicts and sets holding only plain values: compared as Python compares them
    (`1 == 1.0`, `True == 1`, a namedtuple equals its tuple, numpy as numpy);
  * a type with an `__eq__` written in Python (by the solution: an `int` subclass equal
    to everything, an "AlwaysEqual" class) equals only an object of exactly its own type
    holding the same value: the same builtin value, compared by the builtin's own C
    `__eq__`, and the same attributes (`__dict__` and slots), compared by these rules.
    Containers holding such objects are compared item by item. So a stdlib pure-Python
    value (Fraction, Counter) equals its own type only, not an int or a dict;
  * a class without `__eq__` compares by identity, as in Python; other extension types
    holding objects (views, SimpleNamespace) equal only themselves.
  """
  type_, len_, isinstance_, zip_, str_, map_ = type, len, isinstance, zip, str, map
  list_, tuple_, dict_, set_, frozenset_, object_, slice_ = (
    list, tuple, dict, set, frozenset, object, slice)
  attr_error, key_error = AttributeError, KeyError
  mro_of = type.__dict__["__mro__"].__get__
  dict_of = type.__dict__["__dict__"].__get__
  flags_of = type.__dict__["__flags__"].__get__
  name_of = type.__dict__["__name__"].__get__
  module_of = type.__dict__["__module__"].__get__
  obj_getattr = object.__getattribute__
  list_copy, tuple_slice, dict_copy, dict_keys, dict_get = (
    list.copy, tuple.__getitem__, dict.copy, dict.keys, dict.__getitem__)
  heap = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by Python code (a C type is not)
  leaf_bases = frozenset((int, bool, float, complex, str, bytes, bytearray, type(None), range))
  plain_leaves = frozenset((int, bool, float, complex, str, bytes, type(None)))
  leaf_modules = frozenset(("numpy", "decimal", "_decimal", "datetime"))
  max_depth = 100

  def layout(t):
    """(the first C base of t, whether a Python-level class before it defines __eq__)."""
    overridden = False
    for c in mro_of(t):
      if not flags_of(c) & heap:
        return c, overridden
      if "__eq__" in dict_of(c):
        overridden = True
    return object_, overridden

  def kind(base):
    if base in leaf_bases:
      return "leaf"
    if base is list_ or base is tuple_:
      return "seq"
    if base is set_ or base is frozenset_:
      return "set"
    if dict_ in mro_of(base):
      return "map"
    module = module_of(base)
    if module == "collections" and name_of(base) == "deque":
      return "seq"
    if module in leaf_modules:
      return "array" if name_of(base) == "ndarray" else "leaf"
    return "object" if base is object_ else "opaque"

  def items(x, base):
    """A sequence's items as its C storage holds them."""
    if base is list_:
      return list_copy(x)
    if base is tuple_:
      return tuple_slice(x, slice_(None))
    return list_(dict_of(base)["__iter__"](x))  # deque

  def plain(x, depth):
    t = type_(x)
    if t in plain_leaves:
      return True
    base, over = layout(t)
    if over or depth > max_depth:
      return False
    k = kind(base)
    if k == "leaf":
      return True
    if k == "array":
      return not dict_of(base)["dtype"].__get__(x).hasobject
    if k == "seq":
      ys = items(x, base)
      if frozenset_(map_(type_, ys)) <= plain_leaves:
        return True
      for y in ys:
        if not plain(y, depth + 1):
          return False
      return True
    if k == "set":
      for y in dict_of(base)["__iter__"](x):
        if not plain(y, depth + 1):
          return False
      return True
    if k == "map":
      for key in dict_keys(x):
        if not (plain(key, depth + 1) and plain(dict_get(x, key), depth + 1)):
          return False
      return True
    return False

  def attrs(x):
    try:
      return obj_getattr(x, "__dict__")
    except attr_error:
      return None

  def state_eq(a, b, depth):
    """The same attributes: instance __dict__ and slot values."""
    da, db = attrs(a), attrs(b)
    if (da is None) != (db is None):
      return False
    if da is not None and not eq(dict_copy(da), dict_copy(db), depth + 1):
      return False
    missing = object_()
    for c in mro_of(type_(a)):
      slots = dict_of(c).get("__slots__", ())
      for name in ((slots,) if isinstance_(slots, str_) else slots):
        if name in ("__dict__", "__weakref__"):
          continue
        values = []
        for x in (a, b):
          try:
            values.append(dict_of(c)[name].__get__(x))
          except (attr_error, key_error):
            values.append(missing)
        va, vb = values
        if (va is missing) != (vb is missing) or (
            va is not missing and not eq(va, vb, depth + 1)):
          return False
    return True

  def eq(a, b, depth=0):
    if depth > max_depth:
      return False
    if plain(a, depth) and plain(b, depth):
      return a == b
    ta, tb = type_(a), type_(b)
    (base_a, over_a), (base_b, over_b) = layout(ta), layout(tb)
    k = kind(base_a)
    if over_a or over_b:  # a Python-level __eq__: exactly the same type and value
      if ta is not tb:
        return False
      if k == "leaf":
        return base_a.__eq__(a, b) is True and state_eq(a, b, depth)
      if k == "seq":
        return eq(items(a, base_a), items(b, base_a), depth + 1) and state_eq(a, b, depth)
      if k == "map":
        return eq(dict_copy(a), dict_copy(b), depth + 1) and state_eq(a, b, depth)
      return k == "object" and state_eq(a, b, depth)
    if base_a is not base_b:
      return False
    if k == "seq":
      xs, ys = items(a, base_a), items(b, base_b)
      if len_(xs) != len_(ys):
        return False
      for x, y in zip_(xs, ys):
        if not eq(x, y, depth + 1):
          return False
      return True
    if k == "map":
      for m in (a, b):
        for key in dict_keys(m):
          if not plain(key, depth + 1):
            return False
      if dict_keys(a) != dict_keys(b):
        return False
      if name_of(base_a) == "OrderedDict" and (
          list_(dict_of(base_a)["keys"](a)) != list_(dict_of(base_a)["keys"](b))):
        return False
      for key in dict_keys(a):
        if not eq(dict_get(a, key), dict_get(b, key), depth + 1):
          return False
      return True
    return a is b  # a set of disguises, an object-identity class, an opaque C type

  return eq


def _rewrite_eq(node, name, in_assert=False):
  """`assert x == y` -> `assert <name>(x, y)` for two-operand == inside assert statements.

  A hand-written walk over `_ast` nodes: importing the `ast` module costs ~13 ms.
  """
  for field in node._fields:
    value = getattr(node, field, None)
    inner = in_assert or (isinstance(node, _ast.Assert) and field == "test")
    if isinstance(value, list):
      for i, item in enumerate(value):
        if isinstance(item, _ast.AST):
          value[i] = _rewrite_eq(item, name, inner)
    elif isinstance(value, _ast.AST):
      setattr(node, field, _rewrite_eq(value, name, inner))
  if (in_assert and isinstance(node, _ast.Compare) and len(node.ops) == 1
      and isinstance(node.ops[0], _ast.Eq)):
    loc = {k: getattr(node, k) for k in ("lineno", "col_offset", "end_lineno", "end_col_offset")}
    func = _ast.Name(id=name, ctx=_ast.Load(), **loc)
    return _ast.Call(func=func, args=[node.left, node.comparators[0]], keywords=[], **loc)
  return node


def compile_code(source, filename, eq_name=None):
  """Code object, or None on a syntax error; test code gets the strict == rewrite."""
  try:
    if eq_name is None:
      return compile(source, filename, "exec")
    tree = compile(source, filename, "exec", _ast.PyCF_ONLY_AST)
    return compile(_rewrite_eq(tree, eq_name), filename, "exec")
  except (SyntaxError, ValueError, RecursionError, MemoryError):
    return None
