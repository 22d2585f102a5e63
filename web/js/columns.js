// M4 columns of one subscription, kept in place for drawing: no allocation per frame.
//
// Slot j holds absolute column (base + j) of the subscription's grid. For signal s,
// y[s][4j .. 4j+3] are the column's first, min, max, last in time order (min and max
// swapped when the column falls, so the line goes first -> max -> min -> last), NaN when
// the column has no data; x[4j .. 4j+3] are times inside the column (seconds), shared by
// every signal. `live` stores scroll: a column beyond the last slot shifts everything left.

const FRACTIONS = [0.05, 0.35, 0.65, 0.95];

export class ColumnStore {
  constructor(nSignals, nSlots, widthS, live) {
    this.nSignals = nSignals;
    this.n = nSlots;
    this.widthS = widthS;
    this.live = live;
    this.base = NaN; // set by the first block (live) or by setBase (range)
    this.x = new Float64Array(4 * nSlots);
    this.y = [];
    this.count = [];
    for (let s = 0; s < nSignals; s++) {
      this.y.push(new Float64Array(4 * nSlots).fill(NaN));
      this.count.push(new Float64Array(nSlots));
    }
    this.version = 0; // bumped on every change (elements redraw when it moves)
    this.newest = NaN; // the newest column that holds data (absolute)
  }

  setBase(base) {
    this.base = base;
    this._fillX(0, this.n);
  }

  _fillX(j0, j1) {
    const x = this.x;
    const w = this.widthS;
    for (let j = j0; j < j1; j++) {
      const t = (this.base + j) * w;
      x[4 * j] = t + FRACTIONS[0] * w;
      x[4 * j + 1] = t + FRACTIONS[1] * w;
      x[4 * j + 2] = t + FRACTIONS[2] * w;
      x[4 * j + 3] = t + FRACTIONS[3] * w;
    }
  }

  /** Shift so that absolute column `col` is the last slot (live scrolling). */
  _advance(col) {
    const last = this.base + this.n - 1;
    const d = col - last;
    if (d <= 0) return;
    const n = this.n;
    if (d >= n) {
      for (let s = 0; s < this.nSignals; s++) {
        this.y[s].fill(NaN);
        this.count[s].fill(0);
      }
      this.base = col - n + 1;
      this._fillX(0, n);
      return;
    }
    for (let s = 0; s < this.nSignals; s++) {
      const y = this.y[s];
      y.copyWithin(0, 4 * d);
      y.fill(NaN, 4 * (n - d));
      const c = this.count[s];
      c.copyWithin(0, d);
      c.fill(0, n - d);
    }
    this.x.copyWithin(0, 4 * d);
    this.base += d;
    this._fillX(n - d, n);
  }

  /** Store a `columns` block (arrays are views into the frame: copied here). */
  put(sig, firstCol, n, count, first, min, max, last) {
    if (sig >= this.nSignals || n === 0) return;
    if (Number.isNaN(this.base)) this.setBase(this.live ? firstCol + n - this.n : firstCol);
    if (this.live) this._advance(firstCol + n - 1);
    const y = this.y[sig];
    const cnt = this.count[sig];
    const base = this.base;
    const slots = this.n;
    for (let i = 0; i < n; i++) {
      const j = firstCol + i - base;
      if (j < 0 || j >= slots) continue;
      const k = 4 * j;
      const c = count[i];
      cnt[j] = c;
      if (c > 0) {
        const col = base + j;
        if (!(col <= this.newest)) this.newest = col;
        const f = first[i];
        const l = last[i];
        y[k] = f;
        if (f > l) {
          y[k + 1] = max[i];
          y[k + 2] = min[i];
        } else {
          y[k + 1] = min[i];
          y[k + 2] = max[i];
        }
        y[k + 3] = l;
      } else {
        y[k] = y[k + 1] = y[k + 2] = y[k + 3] = NaN;
      }
    }
    this.version++;
  }

  /** End (seconds) of the newest column with data, or NaN. */
  newestEnd() {
    return (this.newest + 1) * this.widthS;
  }

  /** Slot range [j0, j1) whose columns overlap [t0, t1] seconds. */
  slotsIn(t0, t1) {
    if (Number.isNaN(this.base)) return [0, 0];
    const w = this.widthS;
    const j0 = Math.max(0, Math.floor(t0 / w) - this.base);
    const j1 = Math.min(this.n, Math.floor(t1 / w) - this.base + 1);
    return [j0, Math.max(j0, j1)];
  }

  /** Min and max of signal `sig` over slots [j0, j1) into out[0], out[1] (NaN if none). */
  range(sig, j0, j1, out) {
    const y = this.y[sig];
    let lo = Infinity;
    let hi = -Infinity;
    for (let k = 4 * j0, e = 4 * j1; k < e; k++) {
      const v = y[k];
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    out[0] = lo === Infinity ? NaN : lo;
    out[1] = hi === -Infinity ? NaN : hi;
  }

  /** Time span (seconds) that holds data, or null. */
  extent() {
    if (Number.isNaN(this.base)) return null;
    return [this.base * this.widthS, (this.base + this.n) * this.widthS];
  }
}
