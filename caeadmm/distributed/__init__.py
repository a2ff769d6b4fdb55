"""The Ray layer: everything that imports Ray (Ray Train driver and its helpers); the core
package (model, ADMM, loss, training loop, codec) never does."""
