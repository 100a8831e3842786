//! The step graph: petgraph nodes and edges, topological order, cycles.
//!
//! Built from steps whose ids are unique and whose dependencies all name a
//! step (see [`super::rules`]); what is left to find here is a cycle.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

use super::{Step, WorkflowError};

/// The graph of a workflow and what is derived from it.
#[derive(Debug)]
pub(super) struct Dag {
    pub index: HashMap<String, usize>,
    pub graph: DiGraph<usize, ()>,
    pub order: Vec<usize>,
}

impl Dag {
    /// Builds the graph, or reports a cycle in it.
    pub(super) fn build(file: &str, steps: &[Step]) -> Result<Self, WorkflowError> {
        let index: HashMap<String, usize> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i))
            .collect();

        // INVARIANT: node `i` is step `i`, because nodes are added in order.
        let mut graph = DiGraph::with_capacity(steps.len(), 0);
        for i in 0..steps.len() {
            graph.add_node(i);
        }
        for (i, step) in steps.iter().enumerate() {
            for dependency in &step.depends_on {
                if let Some(&d) = index.get(dependency) {
                    graph.add_edge(NodeIndex::new(d), NodeIndex::new(i), ());
                }
            }
        }

        match topological(&graph) {
            Ok(order) => Ok(Self {
                index,
                graph,
                order,
            }),
            Err(left) => {
                let path = find_cycle(&graph, &left)
                    .into_iter()
                    .map(|i| steps[i].id.clone());
                Err(WorkflowError::Cycle {
                    file: file.to_string(),
                    path: path.collect(),
                })
            }
        }
    }
}

/// Kahn's algorithm, always taking the ready step written first.
///
/// On a cycle, returns `left`: for each step, whether it could not be
/// ordered (it is on a cycle or depends on one).
fn topological(graph: &DiGraph<usize, ()>) -> Result<Vec<usize>, Vec<bool>> {
    let n = graph.node_count();
    let mut waiting: Vec<usize> = graph
        .node_indices()
        .map(|v| graph.neighbors_directed(v, Direction::Incoming).count())
        .collect();
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| waiting[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);

    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for next in graph.neighbors(NodeIndex::new(i)) {
            let j = next.index();
            waiting[j] -= 1;
            if waiting[j] == 0 {
                ready.push(Reverse(j));
            }
        }
    }

    match order.len() == n {
        true => Ok(order),
        false => Err(waiting.iter().map(|&w| w > 0).collect()),
    }
}

/// One cycle among the steps Kahn's algorithm could not order, as step
/// positions from its member written first, around, and back to it.
///
/// Every such step depends on another such step, so walking from one to its
/// first such dependency must come back to a step already visited; the
/// loop closed there is a real cycle. The walk visits each step at most
/// once, so it is bounded by the number of steps.
fn find_cycle(graph: &DiGraph<usize, ()>, left: &[bool]) -> Vec<usize> {
    let Some(start) = left.iter().position(|&l| l) else {
        return Vec::new();
    };
    let first_left_dependency = |i: usize| {
        graph
            .neighbors_directed(NodeIndex::new(i), Direction::Incoming)
            .map(|d| d.index())
            .filter(|&d| left[d])
            .min()
    };

    let mut walk = vec![start];
    let mut visited_at = vec![None; left.len()];
    visited_at[start] = Some(0);
    let mut current = start;
    while let Some(next) = first_left_dependency(current) {
        if let Some(at) = visited_at[next] {
            return close_cycle(&walk[at..]);
        }
        visited_at[next] = Some(walk.len());
        walk.push(next);
        current = next;
    }
    Vec::new()
}

/// Rotates `cycle` to start at its smallest position, and repeats that
/// position at the end.
fn close_cycle(cycle: &[usize]) -> Vec<usize> {
    let lowest = cycle
        .iter()
        .enumerate()
        .min_by_key(|&(_, &i)| i)
        .map_or(0, |(at, _)| at);
    let mut path: Vec<usize> = cycle[lowest..]
        .iter()
        .chain(&cycle[..lowest])
        .copied()
        .collect();
    if let Some(&first) = path.first() {
        path.push(first);
    }
    path
}
