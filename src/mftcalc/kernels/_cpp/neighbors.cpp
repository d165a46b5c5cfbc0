// CPU kernel of the neighbour search (all-pairs or cell list), threaded over centre atoms.
//
// The schema is defined from Python (mftcalc/kernels/_cpp/__init__.py) so that TorchScript can
// compile calls to it whether or not this library was built; this file only registers the CPU
// implementation. Each search scans every centre atom twice: once to count its pairs (a vectorised
// compare-and-add), then, with each atom's first output row known from the counts, to write them in
// place. That costs about as much as buffering the pairs for a few thousand atoms and saves the
// buffers (16 bytes per pair, reallocated as they grow) for large ones; rows come out sorted by the
// centre atom without a sort.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "grid.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace mftcalc_neighbors {
namespace {

constexpr int64_t kGrain = 64;  // centre atoms per parallel task

// Output tensors of large searches are hundreds of MB written once; asking for transparent huge
// pages before the first write cuts page faults ~50x (measured 2 -> 0.4 us/atom of kernel time at
// 100k atoms). Only a hint: ignored where unsupported.
at::Tensor output(at::IntArrayRef shape, const at::TensorOptions& options) {
  at::Tensor tensor = at::empty(shape, options);
#ifdef __linux__
  constexpr uintptr_t huge = uintptr_t(1) << 21;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(tensor.data_ptr()) + huge - 1) & ~(huge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(tensor.data_ptr()) + tensor.nbytes()) & ~(huge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
  return tensor;
}

int64_t floor_div(int64_t a, int64_t n) {  // n > 0
  const int64_t q = a / n;
  return (a % n != 0 && a < 0) ? q - 1 : q;
}

// First output row of each centre atom [N + 1] (the last entry is the number of pairs), from
// `count(i)` pairs per atom.
template <typename Count>
std::vector<int64_t> rows_per_atom(int64_t n_atoms, const Count& count) {
  std::vector<int64_t> rows(n_atoms + 1, 0);
  at::parallel_for(0, n_atoms, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) rows[i + 1] = count(i);
  });
  for (int64_t i = 0; i < n_atoms; ++i) rows[i + 1] += rows[i];
  return rows;
}

// Atoms first..end-1 of a structure-of-arrays position set (x, y, z arrays), translated by t:
// how many lie within the cutoff of the origin, and a call hit(q, r^2) for each of them.
template <typename scalar_t>
struct Range {
  const scalar_t* x;
  const scalar_t* y;
  const scalar_t* z;
  scalar_t cutoff2;

  int64_t count(int64_t first, int64_t end, const scalar_t* t) const {
    int64_t within = 0;
    for (int64_t q = first; q < end; ++q) {  // vectorises
      const scalar_t dx = x[q] + t[0], dy = y[q] + t[1], dz = z[q] + t[2];
      within += dx * dx + dy * dy + dz * dz < cutoff2;
    }
    return within;
  }

  template <typename Hit>
  void scan(int64_t first, int64_t end, const scalar_t* t, const Hit& hit) const {
    constexpr int64_t block = 64;
    scalar_t d2[block];
    int32_t found[block];
    for (int64_t k0 = first; k0 < end; k0 += block) {
      const int64_t m = std::min(block, end - k0);
      for (int64_t q = 0; q < m; ++q) {  // vectorises
        const scalar_t dx = x[k0 + q] + t[0], dy = y[k0 + q] + t[1], dz = z[k0 + q] + t[2];
        d2[q] = dx * dx + dy * dy + dz * dz;
      }
      int64_t n_found = 0;  // branch-free compaction: in crystals hits are rare and unpredictable
      for (int64_t q = 0; q < m; ++q) {
        found[n_found] = static_cast<int32_t>(q);
        n_found += d2[q] < cutoff2;
      }
      for (int64_t h = 0; h < n_found; ++h) hit(k0 + found[h], d2[found[h]]);
    }
  }
};

// [3, N] copy of rows [N, 3] (optionally gathered through order[N]) as one array per direction.
template <typename scalar_t>
std::vector<scalar_t> by_direction(const scalar_t* rows, int64_t n, const int64_t* order) {
  std::vector<scalar_t> out(3 * n);
  for (int64_t a = 0; a < n; ++a) {
    const int64_t r = order ? order[a] : a;
    for (int c = 0; c < 3; ++c) out[c * n + a] = rows[3 * r + c];
  }
  return out;
}

void check_positions(const at::Tensor& positions) {
  TORCH_CHECK(positions.device().is_cpu(), "positions must be a CPU tensor");
  TORCH_CHECK_VALUE(positions.dim() == 2 && positions.size(1) == 3, "positions must have shape [N, 3]");
  TORCH_CHECK_VALUE(positions.scalar_type() == at::kFloat || positions.scalar_type() == at::kDouble,
                    "positions must be float32 or float64");
}

// All pairs within each structure (atoms of a structure contiguous), no periodicity.
// positions [N, 3]; batch [N] int64; structure_start [B + 1] first atom of each structure.
// Returns edge_index [2, E] int64 and distances [E] (dtype of positions).
std::tuple<at::Tensor, at::Tensor> all_pairs(const at::Tensor& positions_in, const at::Tensor& batch,
                                             const std::vector<int64_t>& structure_start, double cutoff) {
  TORCH_CHECK_VALUE(cutoff > 0, "cutoff must be positive");
  const at::Tensor positions = positions_in.contiguous();
  const int64_t n_atoms = positions.size(0);
  std::tuple<at::Tensor, at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(positions.scalar_type(), "mftcalc_all_pairs", [&] {
    const scalar_t* x = positions.data_ptr<scalar_t>();
    const int64_t* b = batch.data_ptr<int64_t>();
    const int64_t* start = structure_start.data();
    const std::vector<scalar_t> soa = by_direction<scalar_t>(x, n_atoms, nullptr);
    const Range<scalar_t> range{soa.data(), soa.data() + n_atoms, soa.data() + 2 * n_atoms,
                                static_cast<scalar_t>(cutoff * cutoff)};
    const std::vector<int64_t> rows = rows_per_atom(n_atoms, [&](int64_t i) {
      const scalar_t t[3] = {-x[3 * i], -x[3 * i + 1], -x[3 * i + 2]};
      return range.count(start[b[i]], start[b[i] + 1], t) - 1;  // not i itself
    });
    const int64_t n_pairs = rows.back();
    at::Tensor edge_index = output({2, n_pairs}, positions.options().dtype(at::kLong));
    at::Tensor distances = output({n_pairs}, positions.options());
    int64_t* ij = edge_index.data_ptr<int64_t>();
    scalar_t* d = distances.data_ptr<scalar_t>();
    at::parallel_for(0, n_atoms, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        int64_t row = rows[i];
        const scalar_t t[3] = {-x[3 * i], -x[3 * i + 1], -x[3 * i + 2]};
        range.scan(start[b[i]], start[b[i] + 1], t, [&](int64_t j, scalar_t d2) {
          if (j == i) return;
          ij[row] = i;
          ij[n_pairs + row] = j;
          d[row++] = std::sqrt(d2);
        });
      }
    });
    result = {edge_index, distances};
  });
  return result;
}

// Cell-list scan of one centre atom over a binned batch (grid.h), atoms counting-sorted by bin:
// for every bin offset within its structure's search range it scans the atoms of that bin;
// consecutive bins along the last direction with the same lattice shift are one contiguous range of
// sorted atoms, so a 3 x 3 x 3 search costs 9 range scans.
template <typename scalar_t>
struct CellScan {
  const Binned<scalar_t>& binned;
  const std::vector<int64_t>& bin_start;  // [n_bins + 1] first sorted atom of each bin
  const std::vector<int64_t>& perm;       // [N] input index of each sorted atom
  Range<scalar_t> range;                  // over the bin-sorted wrapped positions
  const int64_t* batch;
  const double* cell;  // [B, 3, 3] input cells

  // Calls range(first, end, shift [3] int64 input-basis cell shift, translation [3], unshifted)
  // for every non-empty range of sorted atoms atom i must scan.
  template <typename Range>
  void walk(int64_t i, const Range& range) const {
    const int64_t b = batch[i];
    const Structure& st = binned.structures[b];
    const int64_t* n = st.bins;
    const int64_t* k = st.search;
    const scalar_t* x = binned.wrapped.data() + 3 * i;
    const int64_t local = binned.bin_id[i] - st.first_bin;
    const int64_t bz = local % n[2], by = local / n[2] % n[1], bx = local / n[2] / n[1];
    for (int64_t ox = -k[0]; ox <= k[0]; ++ox) {
      const int64_t wx = floor_div(bx + ox, n[0]);
      if (wx != 0 && !st.periodic[0]) continue;
      for (int64_t oy = -k[1]; oy <= k[1]; ++oy) {
        const int64_t wy = floor_div(by + oy, n[1]);
        if (wy != 0 && !st.periodic[1]) continue;
        const int64_t row = st.first_bin + ((bx + ox - wx * n[0]) * n[1] + (by + oy - wy * n[1])) * n[2];
        for (int64_t oz = -k[2]; oz <= k[2];) {
          const int64_t wz = floor_div(bz + oz, n[2]), nz = bz + oz - wz * n[2];
          int64_t length = 1;  // following offsets stay in the same period: one contiguous range
          while (oz + length <= k[2] && nz + length < n[2]) ++length;
          oz += length;
          if (wz != 0 && !st.periodic[2]) continue;
          const int64_t first = bin_start[row + nz], end = bin_start[row + nz + length];
          if (end == first) continue;
          int64_t shift[3];
          scalar_t t[3];
          for (int c = 0; c < 3; ++c) {
            shift[c] = static_cast<int64_t>(wx * st.transform[0][c] + wy * st.transform[1][c] + wz * st.transform[2][c]);
          }
          for (int c = 0; c < 3; ++c) {
            const double* m = cell + 9 * b + c;
            t[c] = static_cast<scalar_t>(shift[0] * m[0] + shift[1] * m[3] + shift[2] * m[6]) - x[c];
          }
          range(first, end, shift, t, wx == 0 && wy == 0 && wz == 0);
        }
      }
    }
  }

  // Number of neighbours of atom i (the unshifted range holding i counts i itself at distance 0).
  int64_t count(int64_t i) const {
    int64_t total = 0;
    walk(i, [&](int64_t first, int64_t end, const int64_t*, const scalar_t* t, bool unshifted) {
      total += range.count(first, end, t) - (unshifted && binned.bin_id[perm[first]] <= binned.bin_id[i] &&
                                             binned.bin_id[i] <= binned.bin_id[perm[end - 1]]);
    });
    return total;
  }

  // Calls hit(j, shift [3] int64 input-basis cell shift of the search lattice, r^2) per neighbour.
  template <typename Hit>
  void operator()(int64_t i, const Hit& hit) const {
    walk(i, [&](int64_t first, int64_t end, const int64_t* shift, const scalar_t* t, bool unshifted) {
      range.scan(first, end, t, [&](int64_t k, scalar_t d2) {
        const int64_t j = perm[k];
        if (!(unshifted && j == i)) hit(j, shift, d2);
      });
    });
  }
};

// Cell-list pairs of a batch. positions [N, 3] Å (unwrapped input); batch [N] int64; cell
// [B, 3, 3] Å; pbc [B, 3] bool. Returns edge_index [2, E] int64, shifts [E, 3] and distances [E]
// (dtype of positions), shifts relative to the unwrapped input.
std::tuple<at::Tensor, at::Tensor, at::Tensor> cell_pairs(const at::Tensor& positions_in, const at::Tensor& batch_in,
                                                          const at::Tensor& cell_in, const at::Tensor& pbc_in,
                                                          double cutoff) {
  TORCH_CHECK_VALUE(cutoff > 0, "cutoff must be positive");
  TORCH_CHECK_VALUE(cell_in.dim() == 3 && cell_in.size(1) == 3 && cell_in.size(2) == 3, "cell must have shape [B, 3, 3]");
  TORCH_CHECK_VALUE(pbc_in.dim() == 2 && pbc_in.size(0) == cell_in.size(0) && pbc_in.size(1) == 3,
                    "pbc must have shape [B, 3]");
  const at::Tensor positions = positions_in.contiguous();
  const at::Tensor batch = batch_in.contiguous().to(at::kLong);
  const at::Tensor cell = cell_in.contiguous().to(at::kDouble);
  const int64_t n_atoms = positions.size(0);
  std::tuple<at::Tensor, at::Tensor, at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(positions.scalar_type(), "mftcalc_cell_pairs", [&] {
    const int64_t* bat = batch.data_ptr<int64_t>();
    const Binned<scalar_t> binned = bin_atoms<scalar_t>(positions.data_ptr<scalar_t>(), bat, n_atoms, cell, pbc_in, cutoff);
    // counting sort by bin
    std::vector<int64_t> bin_start(binned.n_bins + 1, 0);
    for (int64_t a = 0; a < n_atoms; ++a) ++bin_start[binned.bin_id[a] + 1];
    for (int64_t b = 0; b < binned.n_bins; ++b) bin_start[b + 1] += bin_start[b];
    std::vector<int64_t> perm(n_atoms), fill(bin_start.begin(), bin_start.end() - 1);
    for (int64_t a = 0; a < n_atoms; ++a) perm[fill[binned.bin_id[a]]++] = a;
    const std::vector<scalar_t> sorted = by_direction<scalar_t>(binned.wrapped.data(), n_atoms, perm.data());
    const Range<scalar_t> range{sorted.data(), sorted.data() + n_atoms, sorted.data() + 2 * n_atoms,
                                static_cast<scalar_t>(cutoff * cutoff)};
    const CellScan<scalar_t> scan{binned, bin_start, perm, range, bat, cell.data_ptr<double>()};
    const std::vector<int64_t> rows = rows_per_atom(n_atoms, [&](int64_t i) { return scan.count(i); });
    const int64_t n_pairs = rows.back();
    at::Tensor edge_index = output({2, n_pairs}, positions.options().dtype(at::kLong));
    at::Tensor shifts = output({n_pairs, 3}, positions.options());
    at::Tensor distances = output({n_pairs}, positions.options());
    int64_t* ij = edge_index.data_ptr<int64_t>();
    scalar_t* s = shifts.data_ptr<scalar_t>();
    scalar_t* d = distances.data_ptr<scalar_t>();
    const int64_t* image = binned.image.data();
    at::parallel_for(0, n_atoms, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        int64_t row = rows[i];
        scan(i, [&](int64_t j, const int64_t* shift, double d2) {
          ij[row] = i;
          ij[n_pairs + row] = j;
          for (int c = 0; c < 3; ++c) s[3 * row + c] = static_cast<scalar_t>(shift[c] + image[3 * i + c] - image[3 * j + c]);
          d[row++] = static_cast<scalar_t>(std::sqrt(d2));
        });
      }
    });
    result = {edge_index, shifts, distances};
  });
  return result;
}

// The op: checks the batch, then searches all-pairs or with the cell list by the heuristic of
// mftcalc/kernels/_neighbors.py (no periodic direction and at most kAllPairsMaxAtoms atoms per
// structure: all-pairs). positions [N, 3] Å; batch [N] int64 sorted; cell [B, 3, 3] Å; pbc [B, 3]
// bool. Returns edge_index [2, E] int64, shifts [E, 3] and distances [E] (dtype of positions).
std::tuple<at::Tensor, at::Tensor, at::Tensor> neighbor_pairs(const at::Tensor& positions, const at::Tensor& batch_in,
                                                              const at::Tensor& cell, const at::Tensor& pbc_in,
                                                              double cutoff) {
  constexpr int64_t kAllPairsMaxAtoms = 256;
  check_positions(positions);
  TORCH_CHECK_VALUE(batch_in.dim() == 1 && batch_in.size(0) == positions.size(0), "neighbor_list: batch must have shape [N]");
  const at::Tensor batch = batch_in.contiguous().to(at::kLong);
  const at::Tensor pbc = pbc_in.contiguous().to(at::kBool);
  const int64_t n_atoms = positions.size(0), n_structures = cell.size(0);
  const int64_t* b = batch.data_ptr<int64_t>();
  std::vector<int64_t> structure_start(n_structures + 1, 0);
  for (int64_t a = 0; a < n_atoms; ++a) {
    TORCH_CHECK_VALUE(a == 0 || b[a] >= b[a - 1], "neighbor_list: batch must be sorted ascending");
    TORCH_CHECK_VALUE(b[a] >= 0 && b[a] < n_structures, "neighbor_list: need cell [B, 3, 3] with B > batch.max()");
    ++structure_start[b[a] + 1];
  }
  int64_t max_atoms = 0;
  for (int64_t s = 0; s < n_structures; ++s) {
    max_atoms = std::max(max_atoms, structure_start[s + 1]);
    structure_start[s + 1] += structure_start[s];
  }
  const bool* p = pbc.data_ptr<bool>();
  if (std::none_of(p, p + pbc.numel(), [](bool v) { return v; }) && max_atoms <= kAllPairsMaxAtoms) {
    auto [edge_index, distances] = all_pairs(positions, batch, structure_start, cutoff);
    return {edge_index, output({edge_index.size(1), 3}, positions.options()).zero_(), distances};
  }
  return cell_pairs(positions, batch, cell, pbc, cutoff);
}

}  // namespace

TORCH_LIBRARY_IMPL(mftcalc, CPU, m) { m.impl("neighbor_pairs", &neighbor_pairs); }

}  // namespace mftcalc_neighbors
