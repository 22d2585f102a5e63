"""Columns -> pandas and xarray: what ``Columns.to_pandas()``/``to_xarray()`` and
``ColumnSet.to_pandas()``/``to_xarray()`` run (see ``docs/notebook.md``).

pandas and xarray are optional (``pip install 'speeddata[pandas]'``, ``[xarray]``,
``[analysis]`` with matplotlib too): they are imported here, when a conversion is asked
for, never by ``import speeddata``.

The conversions take a :class:`~speeddata.reader.Columns` as it is (this module sits
below the reader and imports nothing of it): ``time``, optional ``recv_time``, the signal
columns, ``signals`` (column -> :class:`~speeddata.schema.Signal`), ``valid`` (masks of
nullable non-float columns), ``channel``, ``schema``, ``start_ns``/``end_ns``, ``attrs``.

Column by column (pandas; xarray):

- ``time``: the index, a ``DatetimeIndex`` in UTC (``tz=None``: naive UTC, no copy); the
  ``time`` coordinate, ``datetime64[ns]`` UTC (no copy).
- ``recv_time``: a ``datetime64[ns, UTC]`` column (in ``tz`` as the index); a
  ``datetime64[ns]`` variable.
- int, long, float, double, boolean: the reader's array itself (no copy); the same.
- nullable int, long, boolean: ``Int32``/``Int64``/``boolean``, ``<NA>`` where null (the
  values not copied); ``float64`` with NaN where null, as xarray decodes masked data (a
  long beyond 2**53 is rounded there: pandas keeps it exact).
- nullable float, double: the array, NaN where null; the same.
- enum: a ``Categorical`` of the symbols (NaN where null); the ``int32`` codes with CF
  ``flag_values``/``flag_meanings`` attributes (nullable: ``float64``, NaN where null).
- string: pandas' default string dtype (NaN where null); ``object`` of ``str`` (NaN where
  null, as xarray keeps it: ``isnull()``).
- bytes, fixed(N): ``object`` of ``bytes`` with every byte (None where null); the same.

Resampled columns of a pivoted file (``<signal>.<agg>``, ``count``) are numbers; an enum's
``first``/``last`` are codes and become categories too. Units and docs go with every
column whose signal is known: pandas ``DataFrame.attrs["units"]``/``["doc"]`` (column ->
text), xarray variable attributes ``units``/``long_name`` (which xarray's plots put on
the axes). The channel, the range read and, for a pivoted file, the group's attributes
(schema, loss and gap counts, ...) go to ``DataFrame.attrs`` / ``Dataset.attrs``.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from .times import format_time

__all__ = ["to_pandas", "to_xarray", "set_to_pandas", "set_to_xarray", "optional_import"]

#: what a pivot's ``--resample`` appends to a signal's name (speeddata.pivot.resample
#: owns the list; this module sits below it)
_AGGREGATES = ("mean", "min", "max", "first", "last", "sum")
_ABSCISSA = ("time", "recv_time")


def optional_import(module: str, extra: str, what: str) -> Any:
    """``module``, or an ImportError that says which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{what} needs {module}, an optional dependency of speeddata: "
            f"pip install 'speeddata[{extra}]'"
        ) from exc


# ---------------------------------------------------------------------------- columns


def _signal(cols: Any, name: str) -> tuple[Any, str | None]:
    """(the Signal of column ``name`` or None, the aggregate of a resampled column)."""
    sig = cols.signals.get(name)
    if sig is not None:
        return sig, None
    base, _, agg = name.rpartition(".")
    if base and agg in _AGGREGATES and base in cols.signals:
        return cols.signals[base], agg
    return None, None


def _is_enum_codes(sig: Any, agg: str | None, values: np.ndarray) -> bool:
    return (
        sig is not None
        and sig.type == "enum"
        and agg in (None, "first", "last")
        and values.dtype.kind in "iu"
    )


def _as_objects(values: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Strings or bytes as an object array of ``str``/``bytes``, None where not valid.

    ``fixed(N)`` (``S{N}``) values keep every byte: numpy drops trailing NULs when it
    hands one out, so each row's N bytes are taken from a raw view."""
    n = len(values)
    if values.dtype.kind == "S":
        width = values.dtype.itemsize
        raw = np.ascontiguousarray(values).view(np.uint8).reshape(n, width)
        out = np.empty(n, object)
        out[:] = [row.tobytes() for row in raw]
    elif values.dtype == object:
        out = values.copy() if valid is not None else values
    else:  # numpy >= 2 StringDType
        out = values.astype(object)
    if valid is not None:
        out[~valid] = None
    return out


def _range_attrs(cols: Any) -> dict[str, Any]:
    """The channel and the range read, for a DataFrame's or Dataset's attrs."""
    attrs: dict[str, Any] = {}
    if cols.channel is not None:
        attrs["channel"] = cols.channel
    if cols.schema is not None:
        attrs["schema_name"] = cols.schema.name
        attrs["time_source"] = "source" if cols.schema.time_field is not None else "receive"
    for key, t_ns in (("start", cols.start_ns), ("end", cols.end_ns)):
        if t_ns is not None:
            attrs[f"{key}_ns"] = int(t_ns)
            attrs[key] = format_time(t_ns)
    for key, value in cols.attrs.items():
        attrs.setdefault(key, value)
    return attrs


def _plain(value: Any) -> Any:
    """An attribute as plain Python (arrays as lists): pandas compares attrs with ``==``."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _datetimes(pd: Any, ns: np.ndarray, tz: str | None, name: str | None) -> Any:
    """int64 ns since the epoch as a DatetimeIndex in ``tz`` (None: naive UTC, sharing
    ``ns``'s memory; pandas copies to attach a time zone)."""
    index = pd.DatetimeIndex(ns.view("M8[ns]"), copy=False, name=name)
    if tz is None:
        return index
    index = index.tz_localize("UTC")
    return index if tz == "UTC" else index.tz_convert(tz)


def to_pandas(cols: Any, *, tz: str | None = "UTC") -> Any:
    """One channel's columns as a ``pandas.DataFrame`` indexed by time (see the module
    docstring). ``tz``: the time zone of the index and ``recv_time`` (``"UTC"``; a name
    such as ``"Europe/Berlin"`` shows local wall-clock times); None gives naive UTC times
    that share the columns' memory (a time zone costs a copy of them)."""
    pd = optional_import("pandas", "pandas", "Columns.to_pandas()")
    data: dict[str, Any] = {}
    units: dict[str, str] = {}
    docs: dict[str, str] = {}
    for name, values in cols.items():
        if name == "time":
            continue
        sig, agg = _signal(cols, name)
        valid = cols.valid.get(name)
        if name == "recv_time":
            data[name] = _datetimes(pd, values, tz, None)
            continue
        if _is_enum_codes(sig, agg, values):
            codes = values if valid is None else np.where(valid, values, -1)
            data[name] = pd.Categorical.from_codes(codes, categories=list(sig.symbols))
        elif values.dtype.kind in "OST":
            data[name] = _as_objects(values, valid)
        elif valid is not None and values.dtype.kind in "iu":
            data[name] = pd.arrays.IntegerArray(values, ~valid)
        elif valid is not None and values.dtype.kind == "b":
            data[name] = pd.arrays.BooleanArray(values, ~valid)
        else:
            data[name] = values
        if sig is not None:
            if sig.unit:
                units[name] = sig.unit
            if sig.doc:
                docs[name] = sig.doc
    index = _datetimes(pd, cols["time"], tz, "time") if "time" in cols else None
    # copy=False: each column keeps its own array (pandas copies a dict's arrays into
    # consolidated blocks by default)
    df = pd.DataFrame(data, index=index, columns=list(data), copy=False)
    attrs = {k: _plain(v) for k, v in _range_attrs(cols).items() if v is not None}
    attrs["units"] = units
    attrs["doc"] = docs
    df.attrs.update(attrs)
    return df


def _netcdf_attr(value: Any) -> Any:
    """An attribute as netCDF can keep it (``Dataset.to_netcdf`` refuses None and bools)."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (list, tuple)):
        return [_netcdf_attr(v) for v in value]
    return value


def to_xarray(cols: Any) -> Any:
    """One channel's columns as an ``xarray.Dataset`` on a ``time`` coordinate (see the
    module docstring)."""
    xr = optional_import("xarray", "xarray", "Columns.to_xarray()")
    pd = optional_import("pandas", "xarray", "Columns.to_xarray()")
    variables: dict[str, Any] = {}
    for name, values in cols.items():
        if name == "time":
            continue
        sig, agg = _signal(cols, name)
        valid = cols.valid.get(name)
        attrs: dict[str, Any] = {}
        if name == "recv_time":
            data = values.view("M8[ns]")
            attrs["long_name"] = "relay receive time (UTC)"
        elif values.dtype.kind in "OST":
            data = _as_objects(values, valid)
        elif valid is not None:
            data = np.where(valid, values, np.nan)  # float64: NaN where null
        else:
            data = values
        if _is_enum_codes(sig, agg, values):
            attrs["flag_values"] = np.arange(len(sig.symbols), dtype=np.int32)
            attrs["flag_meanings"] = " ".join(sig.symbols)
        if sig is not None and name != "recv_time":
            if sig.unit:
                attrs["units"] = sig.unit
            if sig.doc:
                attrs["long_name"] = sig.doc
            attrs["avro_type"] = sig.type
            if sig.logical_type:
                attrs["logical_type"] = sig.logical_type
        variables[name] = xr.Variable(("time",), data, attrs=attrs)
    coords = {}
    if "time" in cols:
        # through a DatetimeIndex: xarray copies a bare datetime64 array into its index
        index = pd.DatetimeIndex(cols["time"].view("M8[ns]"), copy=False, name="time")
        time_doc = "source time (UTC)"
        if cols.schema is not None and cols.schema.time_field is None:
            time_doc = "relay receive time (UTC)"
        coords["time"] = index
    ds = xr.Dataset(variables, coords=coords)
    if "time" in ds.coords:
        ds["time"].attrs["long_name"] = time_doc
    ds.attrs.update(
        {k: _netcdf_attr(v) for k, v in _range_attrs(cols).items() if v is not None}
    )
    return ds


# ---------------------------------------------------------------------------- sets


def set_to_pandas(channels: Any, *, tz: str | None = "UTC") -> dict[str, Any]:
    """A set of channels (name -> Columns) as name -> DataFrame: channels have their own
    times, so they are not joined into one frame."""
    return {name: to_pandas(cols, tz=tz) for name, cols in channels.items()}


def set_to_xarray(channels: Any, attrs: dict | None = None) -> Any:
    """A set of channels as an ``xarray.DataTree``: one child node per channel (its
    Dataset, with its own ``time``), ``attrs`` (the set's) on the root, as the groups of
    a pivoted HDF5 file."""
    xr = optional_import("xarray", "xarray", "ColumnSet.to_xarray()")
    root = xr.Dataset(
        attrs={k: _netcdf_attr(v) for k, v in (attrs or {}).items() if v is not None}
    )
    tree = {"/": root}
    tree.update({f"/{name}": to_xarray(cols) for name, cols in channels.items()})
    return xr.DataTree.from_dict(tree)
