/-!
Small theorems about natural numbers and lists, each with a `sorry` for `leanrotor prove` to fill.
Core Lean only (no Mathlib), so a bare `lean` toolchain can check them.
-/

theorem add_zero' (n : Nat) : n + 0 = n := by
  sorry

theorem zero_add' (n : Nat) : 0 + n = n := by
  sorry

theorem and_swap (p q : Prop) (h : p ∧ q) : q ∧ p := by
  sorry

theorem length_append' (xs ys : List Nat) : (xs ++ ys).length = xs.length + ys.length := by
  sorry

namespace Examples

/-- Doubling is adding a number to itself. -/
theorem two_mul' (n : Nat) : 2 * n = n + n := by
  sorry

theorem succ_pos' (n : Nat) : 0 < n + 1 := by
  exact Nat.succ_pos n

end Examples
