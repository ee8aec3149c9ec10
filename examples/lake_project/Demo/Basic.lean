/-! A file of a Lake project, for FLTEval-like batch tasks ({name, project, file, theorem}). -/

namespace Demo

def double (n : Nat) : Nat := n + n

theorem double_eq_two_mul (n : Nat) : double n = 2 * n := by
  sorry

theorem double_add (a b : Nat) : double (a + b) = double a + double b := by
  sorry

end Demo
