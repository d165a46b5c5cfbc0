// Binning of a batch for the C++ cell list: the same geometry as mftcalc/kernels/_lattice.py and
// _grid.py (read those for the reasoning), done in one pass per structure and atom instead of
// hundreds of small tensor ops. All geometry in double.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace mftcalc_neighbors {

using Vec3 = std::array<double, 3>;
using Mat3 = std::array<Vec3, 3>;  // rows

inline double dot(const Vec3& a, const Vec3& b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }

// Per-structure search geometry.
struct Structure {
  bool periodic[3];
  Mat3 transform;    // integer-valued, search lattice = transform @ cell
  Mat3 reduced;      // search lattice (periodic rows)
  Mat3 inverse;      // inverse of the search lattice completed along non-periodic directions
  Vec3 low, extent;  // fractional box of the atoms (non-periodic directions); [0, 1) if periodic
  int64_t bins[3], search[3], first_bin;
};

// Pairwise (Gauss) reduction of the periodic rows, as _lattice.reduce_lattice.
inline void reduce(const Mat3& cell, Structure& s) {
  Mat3 rows = cell, t = {{{1, 0, 0}, {0, 1, 0}, {0, 0, 1}}};
  for (int sweep = 0; sweep < 100; ++sweep) {
    bool changed = false;
    for (int p = 0; p < 3; ++p) {
      for (int q = 0; q < 3; ++q) {
        if (p == q || !s.periodic[p] || !s.periodic[q]) continue;
        const double ratio = dot(rows[p], rows[q]) / std::max(dot(rows[q], rows[q]), 1e-300);
        if (std::abs(ratio) <= 0.5 + 1e-9) continue;
        const double mu = std::nearbyint(ratio);
        for (int c = 0; c < 3; ++c) {
          rows[p][c] -= mu * rows[q][c];
          t[p][c] -= mu * t[q][c];
        }
        changed = true;
      }
    }
    if (!changed) break;
  }
  s.transform = t;
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c) s.reduced[r][c] = t[r][0] * cell[0][c] + t[r][1] * cell[1][c] + t[r][2] * cell[2][c];
}

// Orthonormal completion of the non-periodic rows and inversion, as _lattice.effective_cell.
// Returns false if the periodic rows are singular.
inline bool invert(Structure& s) {
  std::vector<Vec3> basis;
  for (int d = 0; d < 3; ++d) {
    if (!s.periodic[d]) continue;
    Vec3 u = s.reduced[d];
    for (const Vec3& q : basis) {
      const double a = dot(u, q);
      for (int c = 0; c < 3; ++c) u[c] -= a * q[c];
    }
    const double norm = std::sqrt(dot(u, u));
    if (!(norm > 0)) return false;
    for (double& v : u) v /= norm;
    basis.push_back(u);
  }
  Mat3 lattice = s.reduced;
  for (int d = 0; d < 3; ++d) {
    if (s.periodic[d]) continue;
    Vec3 best{};
    double best_norm = -1;
    for (int axis = 0; axis < 3; ++axis) {  // the axis most orthogonal to the span so far
      Vec3 u{};
      u[axis] = 1;
      for (const Vec3& q : basis) {
        const double a = dot(u, q);
        for (int c = 0; c < 3; ++c) u[c] -= a * q[c];
      }
      const double norm = std::sqrt(dot(u, u));
      if (norm > best_norm) {
        best_norm = norm;
        for (int c = 0; c < 3; ++c) best[c] = u[c] / norm;
      }
    }
    basis.push_back(best);
    lattice[d] = best;
  }
  const Mat3& m = lattice;
  const double det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
                     m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
  if (!(std::abs(det) > 0) || !std::isfinite(det)) return false;
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 3; ++c) {  // adjugate / det
      const int r1 = (c + 1) % 3, r2 = (c + 2) % 3, c1 = (r + 1) % 3, c2 = (r + 2) % 3;
      s.inverse[r][c] = (m[r1][c1] * m[r2][c2] - m[r1][c2] * m[r2][c1]) / det;
    }
  }
  return true;
}

// Bins, search ranges and capping, as _grid.build_grid / _grid._cap_bins.
inline void bin_structure(Structure& s, double cutoff, int64_t atoms) {
  double width[3];
  for (int d = 0; d < 3; ++d) {
    const double recip = std::sqrt(s.inverse[0][d] * s.inverse[0][d] + s.inverse[1][d] * s.inverse[1][d] +
                                   s.inverse[2][d] * s.inverse[2][d]);
    width[d] = s.extent[d] / recip;
    s.bins[d] = std::max<int64_t>(1, static_cast<int64_t>(std::floor(width[d] / cutoff)));
  }
  const double max_bins = static_cast<double>(atoms * 8 + 64);
  for (int iteration = 0; iteration < 3; ++iteration) {
    const double total = static_cast<double>(s.bins[0]) * s.bins[1] * s.bins[2];
    if (total <= max_bins) break;
    const int active = std::max(1, int(s.bins[0] > 1) + int(s.bins[1] > 1) + int(s.bins[2] > 1));
    const double scale = std::pow(max_bins / total, 1.0 / active);
    for (int64_t& b : s.bins) b = std::max<int64_t>(1, static_cast<int64_t>(std::floor(b * scale)));
  }
  for (int d = 0; d < 3; ++d) {
    const bool needed = s.periodic[d] || s.bins[d] > 1;
    s.search[d] = needed ? std::max<int64_t>(1, static_cast<int64_t>(std::ceil(cutoff * s.bins[d] / width[d] - 1e-9))) : 0;
  }
}

// The binned batch: wrapped positions (dtype of the input), image (input basis), bin ids.
template <typename scalar_t>
struct Binned {
  std::vector<Structure> structures;
  std::vector<scalar_t> wrapped;  // [N, 3]
  std::vector<int64_t> image;     // [N, 3]
  std::vector<int64_t> bin_id;    // [N]
  int64_t n_bins = 0;
};

template <typename scalar_t>
Binned<scalar_t> bin_atoms(const scalar_t* x, const int64_t* batch, int64_t n_atoms, const at::Tensor& cell_in,
                           const at::Tensor& pbc_in, double cutoff) {
  const at::Tensor cell = cell_in.to(at::kDouble).contiguous();
  const at::Tensor pbc = pbc_in.to(at::kBool).contiguous();
  const int64_t n_structures = cell.size(0);
  const double* cl = cell.data_ptr<double>();
  const bool* per = pbc.data_ptr<bool>();
  Binned<scalar_t> out;
  out.structures.resize(n_structures);
  std::vector<int64_t> atoms(n_structures, 0);
  for (int64_t a = 0; a < n_atoms; ++a) {
    TORCH_CHECK_VALUE(batch[a] >= 0 && batch[a] < n_structures, "neighbor_list: batch index out of range of cell");
    ++atoms[batch[a]];
  }
  for (int64_t b = 0; b < n_structures; ++b) {
    Structure& s = out.structures[b];
    Mat3 m;
    for (int r = 0; r < 3; ++r) {
      s.periodic[r] = per[3 * b + r];
      for (int c = 0; c < 3; ++c) m[r][c] = cl[9 * b + 3 * r + c];
    }
    reduce(m, s);
    TORCH_CHECK_VALUE(invert(s),
                      "neighbor_list: a periodic direction has a zero or linearly dependent lattice vector; "
                      "pass a non-singular cell or set pbc False along that direction");
    s.low = {std::numeric_limits<double>::infinity(), std::numeric_limits<double>::infinity(),
             std::numeric_limits<double>::infinity()};
    s.extent = {-std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity(),
                -std::numeric_limits<double>::infinity()};  // holds the maximum until finished
  }
  // fractional coordinates; wrap periodic directions; extent of non-periodic ones
  std::vector<double> frac(3 * n_atoms);
  out.image.assign(3 * n_atoms, 0);
  out.wrapped.resize(3 * n_atoms);
  out.bin_id.resize(n_atoms);
  for (int64_t a = 0; a < n_atoms; ++a) {
    Structure& s = out.structures[batch[a]];
    double image[3];
    for (int d = 0; d < 3; ++d) {
      double f = x[3 * a] * s.inverse[0][d] + x[3 * a + 1] * s.inverse[1][d] + x[3 * a + 2] * s.inverse[2][d];
      image[d] = s.periodic[d] ? std::floor(f) : 0.0;
      f -= image[d];
      frac[3 * a + d] = f;
      if (!s.periodic[d]) {
        s.low[d] = std::min(s.low[d], f);
        s.extent[d] = std::max(s.extent[d], f);
      }
    }
    for (int c = 0; c < 3; ++c) {
      const double shift = image[0] * s.reduced[0][c] + image[1] * s.reduced[1][c] + image[2] * s.reduced[2][c];
      out.wrapped[3 * a + c] = static_cast<scalar_t>(x[3 * a + c] - shift);
      out.image[3 * a + c] = static_cast<int64_t>(image[0] * s.transform[0][c] + image[1] * s.transform[1][c] +
                                                  image[2] * s.transform[2][c]);
    }
  }
  for (int64_t b = 0; b < n_structures; ++b) {
    Structure& s = out.structures[b];
    for (int d = 0; d < 3; ++d) {
      const bool empty = !std::isfinite(s.low[d]);
      if (s.periodic[d] || empty) {
        s.low[d] = 0;
        s.extent[d] = 1;
      } else {
        s.extent[d] -= s.low[d];
      }
    }
    bin_structure(s, cutoff, atoms[b]);
    s.first_bin = out.n_bins;
    out.n_bins += s.bins[0] * s.bins[1] * s.bins[2];
  }
  for (int64_t a = 0; a < n_atoms; ++a) {
    const Structure& s = out.structures[batch[a]];
    int64_t cell_bin[3];
    for (int d = 0; d < 3; ++d) {
      const double density = s.bins[d] / std::max(s.extent[d], 1e-300);
      const int64_t k = static_cast<int64_t>(std::floor((frac[3 * a + d] - s.low[d]) * density));
      cell_bin[d] = std::min(std::max<int64_t>(k, 0), s.bins[d] - 1);
    }
    out.bin_id[a] = s.first_bin + (cell_bin[0] * s.bins[1] + cell_bin[1]) * s.bins[2] + cell_bin[2];
  }
  return out;
}

}  // namespace mftcalc_neighbors
